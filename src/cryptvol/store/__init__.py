"""The state store: the ordered key-value contract (`base`) on SQLite (`sqlite`, the embedded
default) or etcd (`etcd`, a cluster). `state` keeps volume and snapshot records in it, `keys`
its key material; neither reaches into the other's keys."""
