"""cryptvol kms layer: the Kubernetes KMS v2 plugin that kube-apiserver calls to encrypt
Secrets at rest, served from the same key manager as the volumes' keys.

Thin, like `csi`: `service` validates each request against the limits kube-apiserver keeps
and calls `cryptvol.keys.sealed` inward; `server` serves it on a unix socket with the shared
`cryptvol.rpc` plumbing; `metrics` adds the current key and each key's last use.
"""
