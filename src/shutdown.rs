//! shutdown (built with the data plane).
