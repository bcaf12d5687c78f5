//! metrics (built with the data plane).
