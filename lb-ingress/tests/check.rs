//! `lb-ingress check`: the binary reads a manifests directory once, prints the routes the
//! proxy would serve and every problem, and says so in its exit code (0 clean, 1
//! problems, 2 nothing checked).
mod common;

use std::process::{Command, Output};

use common::Manifests;

const SHOP: &str = r"apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080}
endpoints:
- addresses: [10.1.0.7]
  conditions: {ready: true}
- addresses: [10.1.0.8]
  conditions: {ready: false}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  ingressClassName: lb
  rules:
  - host: shop.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /cart, pathType: Exact, backend: {service: {name: web, port: {name: http}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: theirs, namespace: shop}
spec:
  ingressClassName: nginx
  rules:
  - host: theirs.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
";

fn check(m: &Manifests, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lb-ingress"))
        .arg("check")
        .arg("--manifests")
        .arg(m.path())
        .args(extra)
        .output()
        .expect("lb-ingress runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_clean_directory_lists_its_routes_and_exits_0() {
    let m = Manifests::new();
    m.write("shop.yaml", SHOP);
    let o = check(&m, &[]);
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("2 route(s)"), "{out}");
    let line = |path: &str| {
        out.lines()
            .find(|l| l.starts_with("shop.example") && l.contains(path))
            .unwrap_or_else(|| panic!("no route {path} in:\n{out}"))
            .to_owned()
    };
    // Only the ready endpoint; the port by name resolves like the one by number.
    for (path, kind) in [("/ ", "(Prefix)"), ("/cart", "(Exact)")] {
        let l = line(path);
        assert!(l.contains(kind) && l.contains("shop/web:"), "{l}");
        assert!(
            l.contains("10.1.0.7:8080") && !l.contains("10.1.0.8"),
            "{l}"
        );
        assert!(l.ends_with("shop/shop"), "{l}");
    }
    assert!(
        !out.contains("theirs.example"),
        "another class's Ingress: {out}"
    );
    assert!(out.contains("no problems"), "{out}");
}

#[test]
fn problems_are_listed_by_object_and_exit_1() {
    let m = Manifests::new();
    m.write("shop.yaml", SHOP);
    m.write(
        "broken.yaml",
        r"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: broken
  namespace: shop
  annotations: {nginx.ingress.kubernetes.io/proxy-body-size: lots}
spec:
  ingressClassName: lb
  rules:
  - host: broken.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: gone, port: {number: 80}}}}
",
    );
    let o = check(&m, &["--format", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let problems: Vec<&str> = (report["problems"].as_array().unwrap().iter())
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("shop/broken") && p.contains("Service shop/gone not found")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("proxy-body-size") && p.contains("lots")),
        "{problems:?}"
    );
    // The broken rule is still a route (503 until its Service exists).
    let broken = (report["routes"].as_array().unwrap().iter())
        .find(|r| r["host"] == "broken.example")
        .expect("the broken Ingress's route");
    assert_eq!(broken["endpoints"].as_array().unwrap().len(), 0);
}

#[test]
fn a_directory_that_cannot_be_read_exits_2() {
    let o = Command::new(env!("CARGO_BIN_EXE_lb-ingress"))
        .args([
            "check",
            "--timeout-s",
            "5",
            "--manifests",
            "/nonexistent/lb-ingress-check",
        ])
        .output()
        .expect("lb-ingress runs");
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("lb-ingress check:"), "{err}");
}
