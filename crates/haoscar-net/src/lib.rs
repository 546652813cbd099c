//! HA-OSCAR networking (placeholder).
