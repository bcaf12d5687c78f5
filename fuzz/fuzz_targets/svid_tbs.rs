//! Full SVID verification behind a valid signature: the input is a DER TBSCertificate, which
//! the target signs with its root before verifying (see `harness::svid_tbs`).
//!
//! A structure-aware mutator keeps the input well-formed DER: it parses the TLV tree
//! (descending into OCTET STRINGs that hold DER, as extension values do), changes one node
//! (its bytes, its tag, deleting, duplicating or copying it over another) and re-encodes every
//! length. Byte-level mutation alone almost never gets a certificate with a changed SAN past
//! the length checks; this way the fuzzer spends its time on the SVID rules.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

static FIXTURE: LazyLock<harness::SvidFixture> = LazyLock::new(harness::SvidFixture::new);

fuzz_target!(|data: &[u8]| {
    harness::svid_tbs(&FIXTURE, data);
});

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    if let Some(len) = mutate_der(data, size, max_size, seed) {
        return len;
    }
    fuzzer_mutate(data, size, max_size)
});

#[derive(Clone)]
struct Node {
    tag: u8,
    body: Body,
}

#[derive(Clone)]
enum Body {
    Bytes(Vec<u8>),
    Children(Vec<Node>),
}

/// Parses a sequence of TLVs that covers `input` exactly (single-byte tags, definite lengths).
fn parse(mut input: &[u8], depth: usize) -> Option<Vec<Node>> {
    let mut nodes = Vec::new();
    while !input.is_empty() {
        let tag = *input.first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let first = *input.get(1)? as usize;
        let (len, header) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 3 {
                return None;
            }
            let bytes = input.get(2..2 + n)?;
            (
                bytes.iter().fold(0usize, |acc, b| acc << 8 | *b as usize),
                2 + n,
            )
        };
        let content = input.get(header..header + len)?;
        input = &input[header + len..];
        let nested = tag & 0x20 != 0 || tag == 0x04;
        let body = match nested.then(|| parse(content, depth + 1)).flatten() {
            Some(children) if depth < 12 && !children.is_empty() => Body::Children(children),
            _ if tag & 0x20 != 0 && !content.is_empty() => return None,
            _ => Body::Bytes(content.to_vec()),
        };
        nodes.push(Node { tag, body });
    }
    Some(nodes)
}

fn encode(nodes: &[Node], out: &mut Vec<u8>) {
    for node in nodes {
        let content = match &node.body {
            Body::Bytes(b) => b.clone(),
            Body::Children(children) => {
                let mut inner = Vec::new();
                encode(children, &mut inner);
                inner
            }
        };
        out.extend(harness::der_tlv(node.tag, &content));
    }
}

/// Every node's path (child indices from the top).
fn paths(nodes: &[Node], prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    for (i, node) in nodes.iter().enumerate() {
        prefix.push(i);
        out.push(prefix.clone());
        if let Body::Children(children) = &node.body {
            paths(children, prefix, out);
        }
        prefix.pop();
    }
}

/// The list holding the node at `path`, and its index there.
fn parent_mut<'a>(nodes: &'a mut Vec<Node>, path: &[usize]) -> (&'a mut Vec<Node>, usize) {
    let (last, up) = path.split_last().expect("non-empty path");
    let mut list = nodes;
    for i in up {
        list = match &mut list[*i].body {
            Body::Children(children) => children,
            Body::Bytes(_) => unreachable!("paths only descend into children"),
        };
    }
    (list, *last)
}

/// A small xorshift generator from libFuzzer's seed.
struct Rng(u32);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0 as usize % n.max(1)
    }
}

const TAGS: &[u8] = &[
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0c, 0x13, 0x16, 0x17, 0x18, 0x1e, 0x30, 0x31, 0x80, 0x81,
    0x82, 0x86, 0x87, 0x88, 0xa0, 0xa3,
];

fn mutate_der(data: &mut [u8], size: usize, max_size: usize, seed: u32) -> Option<usize> {
    let mut nodes = parse(&data[..size], 0)?;
    let mut all = Vec::new();
    paths(&nodes, &mut Vec::new(), &mut all);
    if all.is_empty() {
        return None;
    }
    let mut rng = Rng(seed | 1);
    let path = all[rng.below(all.len())].clone();
    match rng.below(6) {
        0 | 1 => {
            let (list, i) = parent_mut(&mut nodes, &path);
            match &mut list[i].body {
                Body::Bytes(bytes) => {
                    let old = bytes.len();
                    let room = (old * 2).max(old + 16);
                    bytes.resize(room, 0);
                    let new = fuzzer_mutate(bytes, old, room);
                    bytes.truncate(new);
                }
                Body::Children(children) => {
                    // Reorder: move the first child to the end.
                    let first = children.remove(0);
                    children.push(first);
                }
            }
        }
        2 => {
            let (list, i) = parent_mut(&mut nodes, &path);
            list.remove(i);
        }
        3 => {
            let (list, i) = parent_mut(&mut nodes, &path);
            let copy = list[i].clone();
            list.insert(i, copy);
        }
        4 => {
            let tag = TAGS[rng.below(TAGS.len())];
            let (list, i) = parent_mut(&mut nodes, &path);
            if matches!(list[i].body, Body::Bytes(_)) || tag & 0x20 != 0 {
                list[i].tag = tag;
            }
        }
        _ => {
            let other = all[rng.below(all.len())].clone();
            if other.starts_with(&path) || path.starts_with(&other) {
                return None;
            }
            let copy = {
                let (list, i) = parent_mut(&mut nodes, &other);
                list[i].clone()
            };
            let (list, i) = parent_mut(&mut nodes, &path);
            list[i] = copy;
        }
    }
    let mut out = Vec::new();
    encode(&nodes, &mut out);
    if out.len() > max_size || out.is_empty() {
        return None;
    }
    data[..out.len()].copy_from_slice(&out);
    Some(out.len())
}
