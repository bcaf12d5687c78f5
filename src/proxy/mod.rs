//! The data path: listeners, sniffing, inbound, outbound, the copy loop.
pub mod copy;
pub mod sniff;
