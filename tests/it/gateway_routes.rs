//! A VirtualService bound to a plaintext HTTP Gateway server, with curl as the client and the
//! echo apps behind STRICT sidecars showing what arrived: uri exact / prefix / regex (a whole-
//! value match) choose between `sentences` and `name`, a header match, query parameters,
//! unmatched requests get Envoy's 404 (`NR`), `rewrite.uri`, `redirect`, `directResponse`,
//! request and response header edits, weights (a 0-weight destination never gets a request),
//! `timeout` (a slow app → 504 from the gateway).

use std::time::Duration;

use crate::common::{eventually, free_port, metric_sum, temp_dir, tool_available};
use crate::gateway::{curl_http, Curl, Edge};

const HOST: &str = "sentences.example.com";

fn routes_yaml(edge: &Edge, port: u16) -> String {
    let (s, n) = (edge.sentences_port, edge.name_port);
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: routes-gateway, namespace: default }}
spec:
  selector: {{ istio: ingressgateway }}
  servers:
    - port: {{ number: {port}, name: http, protocol: HTTP }}
      hosts: [ "{HOST}" ]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: routes, namespace: default }}
spec:
  hosts: [ "{HOST}" ]
  gateways: [ routes-gateway ]
  http:
    - name: by-header
      match: [ {{ headers: {{ x-route: {{ exact: name }} }} }} ]
      route: [ {{ destination: {{ host: name, port: {{ number: {n} }} }} }} ]
    - name: exact
      match: [ {{ uri: {{ exact: /exact }} }} ]
      route: [ {{ destination: {{ host: name, port: {{ number: {n} }} }} }} ]
    - name: regex
      match: [ {{ uri: {{ regex: "/re/[0-9]+" }} }} ]
      route: [ {{ destination: {{ host: name, port: {{ number: {n} }} }} }} ]
    - name: query
      match: [ {{ uri: {{ prefix: /q }}, queryParams: {{ v: {{ exact: "2" }} }} }} ]
      route: [ {{ destination: {{ host: name, port: {{ number: {n} }} }} }} ]
    - name: rewrite
      match: [ {{ uri: {{ prefix: /api/ }} }} ]
      rewrite: {{ uri: /v2/ }}
      route: [ {{ destination: {{ host: sentences, port: {{ number: {s} }} }} }} ]
    - name: redirect
      match: [ {{ uri: {{ prefix: /old }} }} ]
      redirect: {{ uri: /moved, authority: elsewhere.example.com }}
    - name: direct
      match: [ {{ uri: {{ exact: /teapot }} }} ]
      directResponse: {{ status: 418, body: {{ string: "short and stout" }} }}
    - name: headers
      match: [ {{ uri: {{ prefix: /headers }} }} ]
      headers:
        request:
          set: {{ x-gw-set: "yes" }}
          add: {{ x-gw-add: added }}
          remove: [ x-drop ]
        response:
          set: {{ x-resp: r }}
          remove: [ x-app-header ]
      route: [ {{ destination: {{ host: sentences, port: {{ number: {s} }} }} }} ]
    - name: timeout
      match: [ {{ uri: {{ prefix: /slow }} }} ]
      timeout: 500ms
      route: [ {{ destination: {{ host: sentences, port: {{ number: {s} }} }} }} ]
    - name: weights
      match: [ {{ uri: {{ prefix: /weights }} }} ]
      route:
        - {{ destination: {{ host: sentences, port: {{ number: {s} }} }}, weight: 100 }}
        - {{ destination: {{ host: name, port: {{ number: {n} }} }}, weight: 0 }}
    - name: to-sentences
      match: [ {{ uri: {{ prefix: /sentences }} }}, {{ uri: {{ prefix: /re/ }} }} ]
      route: [ {{ destination: {{ host: sentences, port: {{ number: {s} }} }} }} ]
"#
    )
}

#[test]
fn virtual_service_rules_at_the_gateway() {
    if !tool_available("curl") {
        return;
    }
    let cwd = temp_dir("gateway-routes");
    let edge = Edge::new();
    let port = free_port();
    edge.write("gateway.yaml", &routes_yaml(&edge, port));
    let run = edge.start(&[]);
    let get =
        |path: &str, extra: &[&str]| -> Curl { curl_http(cwd.path(), HOST, port, path, extra) };
    let app_of = |path: &str, extra: &[&str]| -> (String, String) {
        let r = get(path, extra);
        assert_eq!(
            r.status,
            200,
            "{path}: {r:?}\ngateway: {}",
            run.gateway.logs()
        );
        let e = r.echo();
        (e.app.clone(), e.path().to_string())
    };

    // Which destination each match chooses (and the path the app saw).
    assert_eq!(
        app_of("/sentences/a", &[]),
        ("sentences".into(), "/sentences/a".into())
    );
    assert_eq!(
        app_of("/sentences/a", &["-H", "x-route: name"]),
        ("name".into(), "/sentences/a".into()),
        "header match"
    );
    assert_eq!(app_of("/exact", &[]), ("name".into(), "/exact".into()));
    assert_eq!(app_of("/re/42", &[]), ("name".into(), "/re/42".into()));
    // A regex matches the whole path: /re/42x is not /re/[0-9]+ and falls through to prefix /re/.
    assert_eq!(
        app_of("/re/42x", &[]),
        ("sentences".into(), "/re/42x".into())
    );
    assert_eq!(app_of("/q?v=2", &[]), ("name".into(), "/q?v=2".into()));

    // Unmatched: Envoy's 404, counted with NR; nothing reached an app.
    for (path, extra) in [
        ("/exact/more", &[][..]),
        ("/q?v=1", &[][..]),
        ("/nothing", &[][..]),
    ] {
        let r = get(path, extra);
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(
            crate::gateway::Echo::parse(&r.body).is_none(),
            "{path}: {r:?}"
        );
    }
    let unknown_host = curl_http(cwd.path(), "other.example.com", port, "/sentences", &[]);
    assert_eq!(unknown_host.status, 404, "{unknown_host:?}");
    let nr = || {
        metric_sum(
            &run.gateway.metrics_text(),
            "istio_requests_total",
            &[("response_code", "404"), ("response_flags", "NR")],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || nr() == 4.0),
        "4 unmatched requests with NR: {}",
        run.gateway.metrics_text()
    );

    // rewrite.uri replaces the matched prefix; the query stays.
    assert_eq!(
        app_of("/api/users?id=7", &[]),
        ("sentences".into(), "/v2/users?id=7".into())
    );

    // redirect: 301 to the new authority and path, no app involved.
    let r = get("/old/page", &[]);
    assert_eq!(r.status, 301, "{r:?}");
    let location = r.header("location").unwrap_or_else(|| panic!("{r:?}"));
    assert!(
        location.starts_with("http://elsewhere.example.com") && location.ends_with("/moved"),
        "{location}"
    );

    // directResponse.
    let r = get("/teapot", &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (418, "short and stout"),
        "{r:?}"
    );

    // Header edits: the app sees the request edits, the client the response edits.
    let r = get(
        "/headers",
        &["-H", "x-drop: 1", "-H", "x-gw-set: no", "-H", "x-keep: 1"],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let e = r.echo();
    assert_eq!(e.header("x-gw-set"), Some("yes"), "{e:?}");
    assert_eq!(e.header("x-gw-add"), Some("added"), "{e:?}");
    assert_eq!(e.header("x-drop"), None, "{e:?}");
    assert_eq!(e.header("x-keep"), Some("1"), "{e:?}");
    assert_eq!(r.header("x-resp"), Some("r"), "{r:?}");
    assert_eq!(r.header("x-app-header"), None, "{r:?}");
    // Without the edits the app's own response header arrives.
    let plain = get("/sentences", &[]);
    assert_eq!(plain.header("x-app-header"), Some("from-app"), "{plain:?}");

    // A 0-weight destination never gets a request.
    for i in 0..20 {
        let (app, _) = app_of(&format!("/weights/{i}"), &[]);
        assert_eq!(app, "sentences", "request {i}");
    }
    // name got exactly the header, exact, regex and query matches.
    let to_name = || {
        metric_sum(
            &run.name.metrics_text(),
            "istio_requests_total",
            &[("reporter", "destination"), ("request_protocol", "http")],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || to_name() == 4.0),
        "{}",
        run.name.metrics_text()
    );

    // timeout: the app answers after 3 s, the gateway gives up after 500 ms.
    let r = get("/slow", &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (504, "upstream request timeout"),
        "{r:?}"
    );
    let ut = || {
        metric_sum(
            &run.gateway.metrics_text(),
            "istio_requests_total",
            &[("response_code", "504"), ("response_flags", "UT")],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || ut() == 1.0),
        "{}",
        run.gateway.metrics_text()
    );
}
