"""The Kubernetes API, read-only and small: where it is (`config`) and the few objects the
driver reads from it (`api`). Only the Kata direct-volume triggers use it; the key manager
never does (see DESIGN.md: it talks to etcd so it can serve kube-apiserver at boot)."""
