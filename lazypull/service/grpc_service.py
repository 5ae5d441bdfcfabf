"""containerd's snapshots gRPC service over the Snapshotter, errors mapped to the codes
containerd turns back into its errdefs (NotFound, AlreadyExists, ...)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from lazypull.service.proto import mount_pb2, snapshots_pb2, snapshots_pb2_grpc
from lazypull.snapshot.lifecycle import LayerMountError
from lazypull.snapshot.snapshotter import Mount, Snapshotter
from lazypull.snapshot.store import Snapshot, SnapshotError

log = logging.getLogger(__name__)
T = TypeVar("T")

_CODES = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
}


def _mounts(ms: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=m.options) for m in ms]


def _ts(t: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def _info(s: Snapshot) -> snapshots_pb2.Info:
    return snapshots_pb2.Info(
        name=s.key,
        parent=s.parent,
        kind=int(s.kind),
        created_at=_ts(s.created),
        updated_at=_ts(s.updated),
        labels=s.labels,
    )


class SnapshotsService(snapshots_pb2_grpc.SnapshotsServicer):
    def __init__(self, sn: Snapshotter) -> None:
        self.sn = sn

    def _call(self, context: grpc.ServicerContext, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except SnapshotError as e:
            context.abort(_CODES.get(e.code, grpc.StatusCode.UNKNOWN), str(e))
        except LayerMountError as e:  # a lazy layer that cannot be served: containerd reports it
            log.error("%s failed: %s", what, e)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{what}: {e}")
        except Exception as e:
            log.exception("%s failed", what)
            context.abort(grpc.StatusCode.UNKNOWN, f"{what}: {e}")
        raise AssertionError("unreachable")

    def Prepare(self, req: Any, context: grpc.ServicerContext) -> Any:
        ms = self._call(context, "prepare", lambda: self.sn.prepare(req.key, req.parent, dict(req.labels)))
        return snapshots_pb2.PrepareSnapshotResponse(mounts=_mounts(ms))

    def View(self, req: Any, context: grpc.ServicerContext) -> Any:
        ms = self._call(context, "view", lambda: self.sn.view(req.key, req.parent, dict(req.labels)))
        return snapshots_pb2.ViewSnapshotResponse(mounts=_mounts(ms))

    def Mounts(self, req: Any, context: grpc.ServicerContext) -> Any:
        ms = self._call(context, "mounts", lambda: self.sn.mounts(req.key))
        return snapshots_pb2.MountsResponse(mounts=_mounts(ms))

    def Commit(self, req: Any, context: grpc.ServicerContext) -> Any:
        self._call(context, "commit", lambda: self.sn.commit(req.name, req.key, dict(req.labels)))
        return empty_pb2.Empty()

    def Remove(self, req: Any, context: grpc.ServicerContext) -> Any:
        self._call(context, "remove", lambda: self.sn.remove(req.key))
        return empty_pb2.Empty()

    def Stat(self, req: Any, context: grpc.ServicerContext) -> Any:
        s = self._call(context, "stat", lambda: self.sn.stat(req.key))
        return snapshots_pb2.StatSnapshotResponse(info=_info(s))

    def Update(self, req: Any, context: grpc.ServicerContext) -> Any:
        paths = list(req.update_mask.paths)
        s = self._call(context, "update", lambda: self.sn.update(req.info.name, dict(req.info.labels), paths))
        return snapshots_pb2.UpdateSnapshotResponse(info=_info(s))

    def List(self, req: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        infos = [_info(s) for s in self._call(context, "list", lambda: self.sn.list(list(req.filters)))]
        for i in range(0, len(infos), 100):
            yield snapshots_pb2.ListSnapshotsResponse(info=infos[i : i + 100])

    def Usage(self, req: Any, context: grpc.ServicerContext) -> Any:
        size, inodes = self._call(context, "usage", lambda: self.sn.usage(req.key))
        return snapshots_pb2.UsageResponse(size=size, inodes=inodes)

    def Cleanup(self, req: Any, context: grpc.ServicerContext) -> Any:
        self._call(context, "cleanup", self.sn.cleanup)
        return empty_pb2.Empty()
