"""Media types, annotation keys and label names: the one place that spells them."""

# OCI image spec
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

# Docker schema 2
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
GZIP_LAYER_TYPES = frozenset({OCI_LAYER_GZIP, DOCKER_LAYER_GZIP, OCI_LAYER_NONDIST_GZIP, DOCKER_LAYER_FOREIGN_GZIP})
ZSTD_LAYER_TYPES = frozenset({OCI_LAYER_ZSTD})
LAYER_TYPES = GZIP_LAYER_TYPES | ZSTD_LAYER_TYPES | {OCI_LAYER}

# Docker -> OCI equivalents, for ``convert --oci``
TO_OCI = {
    DOCKER_MANIFEST_LIST: OCI_INDEX,
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER_FOREIGN_GZIP: OCI_LAYER_NONDIST_GZIP,
}

# Layer annotations written by converters (eStargz / zstd:chunked)
ANNOTATION_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
ANNOTATION_UNCOMPRESSED_SIZE = "io.containers.estargz.uncompressed-size"
# containers/storage's zstd:chunked annotations (read, for layers built by podman/buildah)
ANNOTATION_ZSTD_CHUNKED_MANIFEST_CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
ANNOTATION_ZSTD_CHUNKED_MANIFEST_POSITION = "io.containers.zstd-chunked.manifest-position"

# OCI image layout annotations
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_IMAGE_NAME = "io.containerd.image.name"

# containerd snapshot labels (remote snapshotter protocol)
LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"
LABEL_REMOTE = "containerd.io/snapshot/remote"
LABEL_STARGZ_REFERENCE = "containerd.io/snapshot/remote/stargz.reference"
LABEL_STARGZ_DIGEST = "containerd.io/snapshot/remote/stargz.digest"
LABEL_STARGZ_LAYERS = "containerd.io/snapshot/remote/stargz.layers"
LABEL_CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
LABEL_CRI_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
LABEL_CRI_IMAGE_LAYERS = "containerd.io/snapshot/cri.image-layers"
LABEL_CRI_MANIFEST_DIGEST = "containerd.io/snapshot/cri.manifest-digest"
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"

# SOCI (soci-snapshotter's index of unmodified gzip layers, found through OCI referrers)
SOCI_INDEX_ARTIFACT_TYPE = "application/vnd.amazon.soci.index.v1+json"
SOCI_ZTOC = "application/octet-stream"
ANNOTATION_SOCI_LAYER_DIGEST = "com.amazon.soci.image-layer-digest"
ANNOTATION_SOCI_LAYER_MEDIA_TYPE = "com.amazon.soci.image-layer-mediaType"
ANNOTATION_SOCI_BUILD_TOOL = "com.amazon.soci.build-tool-identifier"
# SOCI index manifest v2 (packaged with the image: lazypull/soci/v2.py says where each comes from)
SOCI_INDEX_V2_ARTIFACT_TYPE = "application/vnd.amazon.soci.index.v2+json"
SOCI_INDEX_ARTIFACT_TYPES = frozenset({SOCI_INDEX_ARTIFACT_TYPE, SOCI_INDEX_V2_ARTIFACT_TYPE})
ANNOTATION_SOCI_INDEX_DIGEST = "com.amazon.soci.index-digest"  # on the image manifest
ANNOTATION_SOCI_IMAGE_MANIFEST_DIGEST = "com.amazon.soci.image-manifest-digest"  # on the index's descriptor
# Set by lazypull's resolvers (never taken from an image): the layer's zTOC descriptor as JSON
ANNOTATION_LAZYPULL_ZTOC = "io.lazypull.soci.ztoc"
# Set by lazypull's resolvers (never taken from an artifact): a raw layer's chunk index blob
# descriptor and its file path, as JSON
ANNOTATION_LAZYPULL_CHUNKS = "io.lazypull.chunks"

# OCI artifacts: files in a registry that are not an image (models, ORAS pushes)
ANNOTATION_TITLE = "org.opencontainers.image.title"  # an ORAS file's name
ANNOTATION_ORAS_UNPACK = "io.deis.oras.content.unpack"  # an ORAS directory: a tar(.gz) to unpack
# CNCF ModelPack (modelpack/model-spec): artifactType, config, and file paths of its layers
MODELPACK_MANIFEST = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODELPACK_LAYER_PREFIX = "application/vnd.cncf.model."  # weight, weight.config, doc, code, dataset
ANNOTATION_MODELPACK_FILEPATH = "org.cncf.model.filepath"
# lazypull's chunk index of an artifact's raw blobs: a referrer of the artifact manifest
CHUNK_INDEX_ARTIFACT_TYPE = "application/vnd.lazypull.chunk-index.v1+json"
CHUNK_INDEX_LAYER = "application/vnd.lazypull.chunk-index.layer.v1+json"

# lazypull's prefetch profile: an OCI artifact whose subject is the image manifest
PREFETCH_PROFILE_ARTIFACT_TYPE = "application/vnd.lazypull.prefetch.profile.v1+json"
