//! admin (built with the data plane).
