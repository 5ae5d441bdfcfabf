"""Kubernetes' CRI image service in front of containerd's: the kubelet's credentials and the pod's prefetch hints."""
