//! The graph page: a layered layout computed here, drawn as SVG here, and an HTML shell with a
//! few lines of script that swaps in a fresh SVG every few seconds.
//!
//! Why server-side and no layout crate: a mesh of tens of workloads reads best as columns of
//! callers and callees (what Kiali's default layout gives too), which is a longest-path layering
//! of a few dozen lines; it is table-tested here, the page needs no JavaScript library (nothing
//! may come from a CDN), and every refresh is one small request whose answer the browser only
//! has to insert. Workloads of one namespace and service sit next to each other in a column.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::graph::{EdgeSecurity, Graph, Node};

/// The page shell; `{{...}}` placeholders are filled by [`html`].
const SHELL: &str = include_str!("index.html");

const NODE_W: f64 = 190.0;
const NODE_H: f64 = 50.0;
const COL_GAP: f64 = 260.0;
const ROW_GAP: f64 = 60.0;
const MARGIN: f64 = 30.0;

/// Where each node goes: (column, row), by node index.
pub fn layout(graph: &Graph) -> Vec<(usize, usize)> {
    let n = graph.nodes.len();
    let index: BTreeMap<&str, usize> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| (node.id.as_str(), i))
        .collect();
    let links: Vec<(usize, usize)> = graph
        .edges
        .iter()
        .filter_map(|e| {
            Some((
                *index.get(e.source_id.as_str())?,
                *index.get(e.destination_id.as_str())?,
            ))
        })
        .filter(|(s, d)| s != d)
        .collect();
    // Longest path from a caller; a cycle stops growing at n (bounded loop).
    let mut column = vec![0usize; n];
    for _ in 0..n {
        let mut changed = false;
        for &(s, d) in &links {
            if column[d] < column[s] + 1 && column[s] + 1 < n.max(1) {
                column[d] = column[s] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Nodes arrive sorted by id (namespace/workload), so a column lists them grouped by
    // namespace; order by service within it.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            let node: &Node = &graph.nodes[i];
            (column[i], &node.namespace, &node.service, &node.id)
        };
        key(a).cmp(&key(b))
    });
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    let mut place = vec![(0, 0); n];
    for i in order {
        let row = rows.entry(column[i]).or_default();
        place[i] = (column[i], *row);
        *row += 1;
    }
    place
}

/// Escapes text for XML content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A rate as people read it: `12`, `1.5`, `0.25`, `0.0033`.
fn per_second(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else if v >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// The graph as one `<svg>` element.
pub fn svg(graph: &Graph) -> String {
    let place = layout(graph);
    let pos = |i: usize| {
        let (c, r) = place[i];
        (
            MARGIN + c as f64 * (NODE_W + COL_GAP),
            MARGIN + r as f64 * (NODE_H + ROW_GAP),
        )
    };
    let cols = place.iter().map(|p| p.0 + 1).max().unwrap_or(1);
    let rows = place.iter().map(|p| p.1 + 1).max().unwrap_or(1);
    let width = 2.0 * MARGIN + cols as f64 * NODE_W + (cols as f64 - 1.0) * COL_GAP;
    let height = 2.0 * MARGIN + rows as f64 * NODE_H + (rows as f64 - 1.0) * ROW_GAP + 20.0;
    let index: BTreeMap<&str, usize> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();

    let mut out = String::with_capacity(4096 + graph.edges.len() * 900);
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" id="mesh" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" data-nodes="{}" data-edges="{}">"#,
        graph.nodes.len(),
        graph.edges.len()
    );
    out.push_str(
        r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#555"/></marker><marker id="arrow-green" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#2e7d32"/></marker><marker id="arrow-red" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#c62828"/></marker></defs>"##,
    );
    if graph.nodes.is_empty() {
        out.push_str(r#"<text x="30" y="40" class="empty">No workloads seen yet: is any source reachable?</text>"#);
    }

    // Edges into one node arrive spread along its side, not all at one point.
    let mut incoming: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for e in &graph.edges {
        incoming.entry(e.destination_id.as_str()).or_default().1 += 1;
    }
    // Label boxes placed so far: a label moves along its curve until it overlaps none.
    let mut placed: Vec<Box> = Vec::new();

    // Edges first, so nodes are drawn over their ends.
    for e in &graph.edges {
        let (Some(&s), Some(&d)) = (
            index.get(e.source_id.as_str()),
            index.get(e.destination_id.as_str()),
        ) else {
            continue;
        };
        let (sx, sy) = pos(s);
        let (dx, dy) = pos(d);
        let slot = incoming.entry(e.destination_id.as_str()).or_default();
        let spread = (slot.0 as f64 - (slot.1 as f64 - 1.0) / 2.0) * 12.0;
        slot.0 += 1;
        let (x1, y1) = (sx + NODE_W, sy + NODE_H / 2.0);
        let (x2, y2) = if dx > sx {
            (dx, dy + NODE_H / 2.0 + spread)
        } else {
            // Backwards or within a column: enter from the right-hand side.
            (dx + NODE_W, dy + NODE_H / 2.0 + 8.0 + spread)
        };
        let bend = ((x2 - x1).abs() / 2.0).max(60.0);
        let curve = [
            (x1, y1),
            (x1 + bend, y1),
            (if dx > sx { x2 - bend } else { x2 + bend }, y2),
            (x2, y2),
        ];
        let path = format!(
            "M{x1:.1},{y1:.1} C{:.1},{:.1} {:.1},{:.1} {x2:.1},{y2:.1}",
            curve[1].0, curve[1].1, curve[2].0, curve[2].1
        );
        let (class, marker, arrow) = match e.security {
            EdgeSecurity::Mtls => ("mtls", "padlock", "arrow-green"),
            EdgeSecurity::Mixed => ("mixed", "padlock", "arrow-red"),
            EdgeSecurity::Plaintext => ("plaintext", "open", "arrow-red"),
            EdgeSecurity::Blocked => ("blocked", "blocked", "arrow"),
        };
        // Two short lines under the marker: the mTLS share, then the rates.
        let first = match e.security {
            EdgeSecurity::Blocked => "reset (STRICT)".to_string(),
            _ => format!("mTLS {}%", e.mtls_percent),
        };
        let second = match (e.security, e.requests_per_second) {
            (EdgeSecurity::Blocked, _) => {
                format!("{} attempts/s", per_second(e.blocked_per_second))
            }
            (_, Some(rps)) => match e.error_percent.filter(|p| *p > 0.0) {
                Some(err) => format!("{} req/s · {err}% 4xx/5xx", per_second(rps)),
                None => format!("{} req/s", per_second(rps)),
            },
            (_, None) => format!("{} conn/s", per_second(e.connections_per_second)),
        };
        let label = format!("{first} · {second}");
        // The marker sits on the line (on a disc of the background colour), the label under
        // it: at the middle of the curve, else the point along it that overlaps the labels
        // placed before it least.
        let label_w = 6.3 * first.chars().count().max(second.chars().count()) as f64;
        let boxed = |(x, y): (f64, f64)| (x - label_w / 2.0, y - 12.0, label_w, 54.0);
        let (mx, my) = [0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8, 0.15, 0.85]
            .iter()
            .map(|t| bezier(&curve, *t))
            .map(|p| (p, placed.iter().map(|q| overlap(q, &boxed(p))).sum::<f64>()))
            .fold(
                None,
                |best: Option<((f64, f64), f64)>, (p, cost)| match best {
                    Some((_, c)) if c <= cost => best,
                    _ => Some((p, cost)),
                },
            )
            .map(|(p, _)| p)
            .unwrap_or_else(|| bezier(&curve, 0.5));
        placed.push(boxed((mx, my)));
        let _ = write!(
            out,
            r#"<g class="edge edge-{class}" data-source="{}" data-destination="{}" data-security="{class}" data-mtls-percent="{}"><title>{} → {}: {}</title><path d="{path}" marker-end="url(#{arrow})"/>"#,
            esc(&e.source_id),
            esc(&e.destination_id),
            e.mtls_percent,
            esc(&e.source_id),
            esc(&e.destination_id),
            esc(&label),
        );
        let _ = write!(
            out,
            r#"<g class="marker marker-{marker}" data-marker="{marker}" transform="translate({:.1},{:.1})"><circle class="disc" cx="7" cy="9" r="11"/>{}</g>"#,
            mx - 7.0,
            my - 9.0,
            icon(marker)
        );
        let _ = write!(
            out,
            r#"<text class="edge-label" x="{mx:.1}" y="{:.1}" text-anchor="middle">{}<tspan x="{mx:.1}" dy="14">{}</tspan></text></g>"#,
            my + 24.0,
            esc(&first),
            esc(&second)
        );
    }

    for (i, n) in graph.nodes.iter().enumerate() {
        let (x, y) = pos(i);
        let unknown = n.workload == "unknown";
        let title = match (&n.address, unknown) {
            (Some(a), _) => format!("unknown {a}"),
            (None, true) => "unknown".to_string(),
            (None, false) => n.workload.clone(),
        };
        let subtitle = if unknown {
            "no identity (plaintext)".to_string()
        } else {
            format!("{}.{}", n.service, n.namespace)
        };
        let _ = write!(
            out,
            r#"<g class="node{}" data-id="{}" data-mode="{}" transform="translate({x:.1},{y:.1})"><rect width="{NODE_W}" height="{NODE_H}" rx="8"/><text class="name" x="10" y="20">{}</text><text class="sub" x="10" y="38">{}</text>"#,
            if unknown { " node-unknown" } else { "" },
            esc(&n.id),
            esc(n.mode.as_deref().unwrap_or("")),
            esc(&title),
            esc(&subtitle)
        );
        if let Some(mode) = &n.mode {
            let w = 8.0 + 6.5 * mode.len() as f64;
            let _ = write!(
                out,
                r#"<g class="badge badge-{}" transform="translate({:.1},-9)"><rect width="{w:.1}" height="16" rx="8"/><text x="{:.1}" y="12" text-anchor="middle">{}</text></g>"#,
                esc(&mode.to_ascii_lowercase().replace('+', "-")),
                NODE_W - w - 6.0,
                w / 2.0,
                esc(mode)
            );
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>");
    out
}

/// A label's box: x, y, width, height.
type Box = (f64, f64, f64, f64);

/// The area two boxes share.
fn overlap(a: &Box, b: &Box) -> f64 {
    let w = (a.0 + a.2).min(b.0 + b.2) - a.0.max(b.0);
    let h = (a.1 + a.3).min(b.1 + b.3) - a.1.max(b.1);
    w.max(0.0) * h.max(0.0)
}

/// The point at `t` (0..1) of a cubic Bézier curve.
fn bezier(c: &[(f64, f64); 4], t: f64) -> (f64, f64) {
    let u = 1.0 - t;
    let w = [u * u * u, 3.0 * u * u * t, 3.0 * u * t * t, t * t * t];
    (
        c.iter().zip(w).map(|(p, w)| p.0 * w).sum(),
        c.iter().zip(w).map(|(p, w)| p.1 * w).sum(),
    )
}

/// A 14×16 padlock drawn with shapes (no icon font: the page loads nothing).
fn icon(marker: &str) -> &'static str {
    match marker {
        "padlock" => {
            r#"<path class="shackle" d="M3.5,8 V5 a3.5,3.5 0 0 1 7,0 V8" fill="none" stroke-width="2"/><rect class="body" x="1" y="7.5" width="12" height="8.5" rx="1.5"/>"#
        }
        "open" => {
            r#"<path class="shackle" d="M10.5,8 V3.5 a3.5,3.5 0 0 0 -7,0 V5" fill="none" stroke-width="2"/><rect class="body" x="1" y="7.5" width="12" height="8.5" rx="1.5"/>"#
        }
        _ => {
            r##"<circle class="body" cx="7" cy="9" r="6.5"/><path class="dash" d="M3,9 H11" stroke="#fff" stroke-width="2.5"/>"##
        }
    }
}

/// The whole page: the shell with the first SVG inlined (so it shows without waiting for the
/// first refresh) and the refresh settings.
pub fn html(svg: &str, window_secs: u64, refresh_ms: u64, source: &str) -> String {
    let mut windows: Vec<u64> = vec![60, 300, 900, 1800];
    if !windows.contains(&window_secs) {
        windows.push(window_secs);
        windows.sort_unstable();
    }
    let options: String = windows
        .iter()
        .map(|w| {
            let label = if w % 60 == 0 {
                format!("{} min", w / 60)
            } else {
                format!("{w} s")
            };
            let selected = if *w == window_secs { " selected" } else { "" };
            format!(r#"<option value="{w}s"{selected}>last {label}</option>"#)
        })
        .collect();
    SHELL
        .replace("{{SVG}}", svg)
        .replace("{{WINDOWS}}", &options)
        .replace("{{REFRESH_MS}}", &refresh_ms.to_string())
        .replace("{{SOURCE}}", &esc(source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::graph::{build, Rate, Security, Traffic, Workload};

    fn graph(edges: &[(&str, &str, Security)]) -> Graph {
        let rates: Vec<Rate> = edges
            .iter()
            .map(|(s, d, sec)| Rate {
                source: Workload::new(s, "default", s),
                destination: Workload::new(d, "default", d),
                security: *sec,
                traffic: Traffic::Connections,
                per_second: 1.0,
            })
            .collect();
        build(&rates, &[])
    }

    #[test]
    fn callers_left_callees_right() {
        use Security::MutualTls as M;
        // (edges, expected (id, column, row)).
        type Case<'a> = (
            Vec<(&'a str, &'a str, Security)>,
            Vec<(&'a str, usize, usize)>,
        );
        let cases: Vec<Case> = vec![
            (
                vec![("sentences", "age", M), ("sentences", "name", M)],
                vec![
                    ("default/age", 1, 0),
                    ("default/name", 1, 1),
                    ("default/sentences", 0, 0),
                ],
            ),
            (
                vec![("a", "b", M), ("b", "c", M), ("a", "c", M)],
                vec![
                    ("default/a", 0, 0),
                    ("default/b", 1, 0),
                    ("default/c", 2, 0),
                ],
            ),
            // A cycle stays bounded.
            (
                vec![("a", "b", M), ("b", "a", M)],
                vec![("default/a", 0, 0), ("default/b", 1, 0)],
            ),
        ];
        for (edges, expected) in cases {
            let g = graph(&edges);
            let place = layout(&g);
            let got: Vec<(&str, usize, usize)> = g
                .nodes
                .iter()
                .zip(&place)
                .map(|(n, (c, r))| (n.id.as_str(), *c, *r))
                .collect();
            assert_eq!(got, expected, "{edges:?}");
        }
    }

    #[test]
    fn svg_marks_edges_and_escapes_names() {
        let g = graph(&[
            ("sentences", "age", Security::MutualTls),
            ("<script>", "age", Security::None),
        ]);
        let s = svg(&g);
        assert!(s.contains(r#"data-security="mtls""#), "{s}");
        assert!(s.contains(r#"data-marker="padlock""#));
        assert!(s.contains(r#"data-security="plaintext""#));
        assert!(s.contains(r#"data-marker="open""#));
        assert!(!s.contains("<script>"));
        assert!(s.contains("&lt;script&gt;"));
        assert!(s.contains(r#"mTLS 100%<tspan x="#), "{s}");
        assert!(s.contains(">1.0 conn/s</tspan>"), "{s}");
        let page = html(&s, 120, 5000, "scrape");
        assert!(page.contains(r#"<option value="120s" selected>last 2 min</option>"#));
        assert!(!page.contains("{{"));
        assert!(!page.contains("http://") || !page.contains("src=\"http"));
    }

    #[test]
    fn rates_read_well() {
        assert_eq!(per_second(25.3), "25");
        assert_eq!(per_second(1.25), "1.2");
        assert_eq!(per_second(0.25), "0.25");
        assert_eq!(per_second(0.0033), "0.0033");
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;
    use crate::dashboard::graph::{build, Rate, Security, Traffic, Workload};

    #[test]
    fn labels_of_crossing_edges_do_not_overlap() {
        let w = |n: &str| Workload::new(n, "default", n);
        let r = |s: Workload, d: &str, sec| Rate {
            source: s,
            destination: w(d),
            security: sec,
            traffic: Traffic::Connections,
            per_second: 1.0,
        };
        let unknown = Workload::new("unknown", "unknown", "unknown");
        let g = build(
            &[
                r(w("sentences"), "age", Security::MutualTls),
                r(w("sentences"), "name-v2", Security::MutualTls),
                r(unknown.clone(), "age", Security::None),
                r(unknown, "name-v1", Security::None),
            ],
            &[],
        );
        let s = svg(&g);
        let mut at: Vec<&str> = s
            .split(r#"class="edge-label" "#)
            .skip(1)
            .map(|l| l.split(" text-anchor").next().unwrap())
            .collect();
        at.sort();
        let n = at.len();
        at.dedup();
        assert_eq!(at.len(), n, "{at:?}");
    }
}
