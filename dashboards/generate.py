#!/usr/bin/env python3
"""Writes the Grafana dashboards in this folder. Run it after changing a panel:
    python3 dashboards/generate.py
The JSON files are committed; tests/ checks every panel query against a real Prometheus
scraping the real daemons, so a renamed metric breaks a test, not a dashboard in prod.

Both dashboards take the Prometheus datasource as a template variable, so they import
as they are. Series are selected by the `node` label: the scrape configuration sets it
(in Kubernetes: relabel __meta_kubernetes_pod_node_name to node; see docs/deploy.md)."""
import json, os

HERE = os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "${datasource}"}


def var_ds():
    return {"name": "datasource", "type": "datasource", "query": "prometheus",
            "label": "Data source", "current": {}, "hide": 0}


def var_query(name, query, label, multi=True):
    return {"name": name, "type": "query", "datasource": DS, "query": {"query": query, "refId": name},
            "definition": query, "label": label, "includeAll": True, "multi": multi,
            "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "refresh": 2, "sort": 1}


def panel(pid, title, exprs, unit="short", x=0, y=0, w=12, h=8, kind="timeseries", desc=""):
    return {
        "id": pid, "type": kind, "title": title, "description": desc, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": lf, "datasource": DS}
                    for i, (e, lf) in enumerate(exprs)],
    }


def dashboard(uid, title, variables, panels):
    return {
        "uid": uid, "title": title, "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "tags": ["lb"],
        "templating": {"list": variables}, "panels": panels, "annotations": {"list": []},
    }


N = 'node=~"$node"'
S = f'{N}, namespace=~"$namespace", service=~"$service"'
RI = "$__rate_interval"

dataplane = dashboard("lb-dataplane", "LB data plane (lb-agent)", [
    var_ds(),
    var_query("node", "label_values(lb_agent_build_info, node)", "Node"),
    var_query("namespace", f"label_values(lb_agent_service_packets_total{{{N}}}, namespace)", "Namespace"),
    var_query("service", f'label_values(lb_agent_service_packets_total{{{N}, namespace=~"$namespace"}}, service)', "Service"),
], [
    panel(1, "Packets per second by Service", [
        (f"sum by (namespace, service) (rate(lb_agent_service_packets_total{{{S}}}[{RI}]))", "{{namespace}}/{{service}}")],
        "pps", 0, 0, desc="New and established packets the kernel translated, summed over CPUs at scrape time."),
    panel(2, "Bytes per second by Service", [
        (f"sum by (namespace, service) (rate(lb_agent_service_bytes_total{{{S}}}[{RI}]))", "{{namespace}}/{{service}}")],
        "Bps", 12, 0),
    panel(3, "Drops and rejects by reason", [
        (f"sum by (reason) (rate(lb_agent_drops_total{{{N}}}[{RI}]))", "{{reason}}")],
        "pps", 0, 8, desc="reject_no_endpoints: a Service without endpoints answered with RST / ICMP unreachable. drop_no_local_endpoints: a Local traffic policy left this node no endpoint while the Service has some elsewhere (dropped, as kube-proxy does)."),
    panel(4, "Data path verdicts", [
        (f"sum by (reason) (rate(lb_agent_datapath_packets_total{{{N}}}[{RI}]))", "{{reason}}")],
        "pps", 12, 8),
    panel(5, "Conntrack fill ratio", [
        (f"lb_agent_conntrack_entries{{{N}}} / lb_agent_conntrack_capacity{{{N}}}", "{{node}} {{map}}")],
        "percentunit", 0, 16, desc="LRU maps: near 1.0 the oldest flows are evicted; raise --conntrack-size."),
    panel(6, "Network programming latency", [
        (f"histogram_quantile(0.5, sum by (le) (rate(lb_agent_network_programming_duration_seconds_bucket{{{N}}}[{RI}])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(lb_agent_network_programming_duration_seconds_bucket{{{N}}}[{RI}])))", "p99")],
        "s", 12, 16, desc="From a change arriving at the agent to the maps updated (kube-proxy's network_programming_duration_seconds)."),
    panel(7, "Backends per Service frontend", [
        (f"lb_agent_service_backends{{{S}}}", "{{namespace}}/{{service}} {{frontend}} {{scope}}")],
        "short", 0, 24, desc="0 means new connections are rejected."),
    panel(8, "Sync health", [
        (f"lb_agent_synced{{{N}}}", "synced {{node}}"),
        (f"sum by (kind) (increase(lb_agent_objects_skipped_total{{{N}}}[1h]))", "skipped {{kind}} (1h)"),
        (f"sum by (map) (increase(lb_agent_map_capacity_errors_total{{{N}}}[1h]))", "map full {{map}} (1h)")],
        "short", 12, 24),
    panel(9, "Full sync duration", [
        (f"lb_agent_sync_duration_seconds_sum{{{N}}} / lb_agent_sync_duration_seconds_count{{{N}}}", "{{node}}")],
        "s", 0, 32),
    panel(10, "Service frontends programmed", [
        (f"lb_agent_service_entries{{{N}}}", "{{node}}")], "short", 12, 32),
])

I = 'ingress=~"$ingress", service=~"$service"'
ingress = dashboard("lb-ingress", "LB ingress (lb-ingress)", [
    var_ds(),
    var_query("ingress", "label_values(lb_ingress_requests_total, ingress)", "Ingress"),
    var_query("service", 'label_values(lb_ingress_requests_total{ingress=~"$ingress"}, service)', "Service"),
], [
    panel(1, "Request rate by Ingress and Service", [
        (f"sum by (ingress, service) (rate(lb_ingress_requests_total{{{I}}}[{RI}]))", "{{ingress}} -> {{service}}")],
        "reqps", 0, 0),
    panel(2, "Requests by status class", [
        (f"sum by (status_class) (rate(lb_ingress_requests_total{{{I}}}[{RI}]))", "{{status_class}}")],
        "reqps", 12, 0),
    panel(3, "Error ratio (5xx)", [
        (f'sum by (service) (rate(lb_ingress_requests_total{{{I}, status_class="5xx"}}[{RI}])) / sum by (service) (rate(lb_ingress_requests_total{{{I}}}[{RI}]))', "{{service}}")],
        "percentunit", 0, 8, desc="503: no ready endpoint; 502: upstream failed; 504: upstream timed out."),
    panel(4, "Request latency", [
        (f"histogram_quantile(0.5, sum by (le) (rate(lb_ingress_request_duration_seconds_bucket{{{I}}}[{RI}])))", "p50"),
        (f"histogram_quantile(0.9, sum by (le) (rate(lb_ingress_request_duration_seconds_bucket{{{I}}}[{RI}])))", "p90"),
        (f"histogram_quantile(0.99, sum by (le) (rate(lb_ingress_request_duration_seconds_bucket{{{I}}}[{RI}])))", "p99")],
        "s", 12, 8),
    panel(5, "Upstream response time", [
        (f"histogram_quantile(0.5, sum by (le, service) (rate(lb_ingress_upstream_response_duration_seconds_bucket{{{I}}}[{RI}])))", "p50 {{service}}"),
        (f"histogram_quantile(0.99, sum by (le, service) (rate(lb_ingress_upstream_response_duration_seconds_bucket{{{I}}}[{RI}])))", "p99 {{service}}")],
        "s", 0, 16),
    panel(6, "Upstream health", [
        (f'sum by (service) (rate(lb_ingress_upstream_connect_errors_total{{service=~"$service"}}[{RI}]))', "connect errors {{service}}"),
        (f'sum by (service) (rate(lb_ingress_upstream_retries_total{{service=~"$service"}}[{RI}]))', "retries {{service}}"),
        ("sum(lb_ingress_ejected_endpoints)", "ejected endpoints")],
        "short", 12, 16, desc="Endpoints that fail to connect are ejected for a while (passive health checking)."),
    panel(7, "Active client connections", [
        ("sum by (listener) (lb_ingress_active_connections)", "{{listener}}")], "short", 0, 24),
    panel(8, "TLS handshakes", [
        (f"sum by (result) (rate(lb_ingress_tls_handshakes_total[{RI}]))", "{{result}}")], "ops", 12, 24),
    panel(9, "Configuration reloads", [
        ("sum by (result) (increase(lb_ingress_config_reloads_total[1h]))", "{{result}} (1h)"),
        ("sum(lb_ingress_config_problems)", "problems now")], "short", 0, 32,
        desc="A problem is an object, reference or annotation skipped; each is logged once, naming it."),
    panel(10, "Mirrored requests", [
        (f"sum by (result) (rate(lb_ingress_mirror_requests_total[{RI}]))", "{{result}}")], "ops", 12, 32,
        desc="Copies sent for mirror-target annotations: success (answered), error, skipped (too many in flight), lagged (the target was slower than the upstream; cut off)."),
])

for name, d in [("dataplane.json", dataplane), ("ingress.json", ingress)]:
    with open(os.path.join(HERE, name), "w") as f:
        json.dump(d, f, indent=2)
        f.write("\n")
    print("wrote", name)
