"""The keys integration tests start real etcd members (`etcd_cluster`), real replica
processes (`replica_proc`) and make throwaway TLS certificates (`tls_certs`); those helper
modules sit beside the tests and are imported by name."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
