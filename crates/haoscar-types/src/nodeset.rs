//! ClusterShell-style node sets (placeholder, being written).
