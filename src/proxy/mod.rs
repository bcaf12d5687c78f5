//! The data path: listeners, sniffing, inbound, outbound, the copy loop.
