#!/usr/bin/env python3
"""Offline checks of the mesh deployment manifests under envoy-config/.

    python3 tests/mesh/validate.py check
        Every YAML file under envoy-config/ parses (also YAML embedded in
        ConfigMaps); every custom resource validates against the
        openAPIV3Schema of its published CRD (tests/mesh/crds, sources in
        SOURCES.md there), converted to JSON Schema: objects are closed
        (additionalProperties: false) unless marked
        x-kubernetes-preserve-unknown-fields, CRD defaults are applied first,
        and every x-kubernetes-validations CEL rule on a present field is
        evaluated with cel-python (a rule that cannot be evaluated fails the
        check, unless it is a transition rule, which needs an old object).
        Self-tests prove that a misspelled field, a bad enum value and a
        violated CEL rule are caught. Cross-references are checked (EnvoyPatchPolicy -> Gateway
        listener name, TCPRoute -> Gateway, GatewayClass -> EnvoyProxy,
        EnvoyFilter -> client Deployment and Service port).

    python3 tests/mesh/validate.py render-eg
        The Listener that Envoy Gateway generates for the Gateway's TCP
        listener and its TCPRoute, with the EnvoyPatchPolicy's RFC 6902 patch
        applied (JSON on stdout).

    python3 tests/mesh/validate.py render-istio
        An Istio-style outbound listener (<ClusterIP>_6379, tcp_proxy to the
        redis-cluster Service) with the EnvoyFilter's REPLACE applied.

    python3 tests/mesh/validate.py render-standalone
        envoy-config/standalone/envoy-rw-split-mirror.yaml as JSON.

tests/mesh_configs.rs runs these and puts the rendered listeners into real
Envoy in front of a loopback Redis Cluster.

Needs PyYAML, jsonschema, jsonpatch and cel-python, which scripts/install.sh
installs; without one of them it fails, naming it.
"""

import copy
import importlib
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIG_DIR = os.path.join(REPO, "envoy-config")
CRDS_DIR = os.path.join(HERE, "crds")

MODULE_FILTER = "envoy.filters.network.dynamic_modules"
MODULE_TYPE = ("type.googleapis.com/envoy.extensions.filters.network."
               "dynamic_modules.v3.DynamicModuleNetworkFilter")
TCP_PROXY = "envoy.filters.network.tcp_proxy"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def require_packages():
    """Import the packages scripts/install.sh installs; fail loudly without."""
    wanted = {"yaml": "pyyaml", "jsonschema": "jsonschema", "jsonpatch": "jsonpatch",
              "celpy": "cel-python"}
    missing = []
    for mod, pkg in wanted.items():
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(pkg)
    if missing:
        print(f"validate.py: FAIL: python3 lacks {', '.join(missing)}; run scripts/install.sh",
              file=sys.stderr)
        sys.exit(1)


require_packages()
import celpy  # noqa: E402
import jsonpatch  # noqa: E402
import jsonschema  # noqa: E402
import yaml  # noqa: E402


class Failure(Exception):
    pass


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def yaml_files():
    out = []
    for root, _, files in os.walk(CONFIG_DIR):
        for f in sorted(files):
            if f.endswith((".yaml", ".yml")):
                out.append(os.path.join(root, f))
    return sorted(out)


def load_docs(path):
    with open(path) as f:
        try:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            raise Failure(f"{rel(path)}: does not parse: {e}")
    return docs


def rel(path):
    return os.path.relpath(path, REPO)


def all_docs():
    """(path, doc) for every document under envoy-config/."""
    return [(p, d) for p in yaml_files() for d in load_docs(p)]


def k8s_docs():
    return [(p, d) for p, d in all_docs() if isinstance(d, dict) and "apiVersion" in d and "kind" in d]


def find(kind, name=None, api_group=None):
    hits = [(p, d) for p, d in k8s_docs()
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
            and (api_group is None or d["apiVersion"].split("/")[0] == api_group)]
    if len(hits) != 1:
        raise Failure(f"expected exactly one {kind} {name or ''} under envoy-config/, found {len(hits)}")
    return hits[0][1]


# ---------------------------------------------------------------------------
# CRD openAPIV3Schema -> JSON Schema
# ---------------------------------------------------------------------------

def to_json_schema(node):
    """Convert one OpenAPI v3 (Kubernetes structural) schema node."""
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "properties":
            out[k] = {name: to_json_schema(s) for name, s in v.items()}
        elif k in ("items", "additionalProperties", "not"):
            out[k] = to_json_schema(v) if isinstance(v, dict) else v
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = [to_json_schema(s) for s in v]
        elif k.startswith("x-kubernetes-") or k in ("description", "nullable", "example"):
            continue
        else:
            out[k] = v
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    open_ = node.get("x-kubernetes-preserve-unknown-fields")
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node and not open_:
        out["additionalProperties"] = False
    return out


def load_crds():
    if not os.path.isdir(CRDS_DIR):
        raise Failure(f"CRD directory {CRDS_DIR} not found (set MESH_CRDS_DIR)")
    crds = {}
    for f in sorted(os.listdir(CRDS_DIR)):
        if not f.endswith(".yaml"):
            continue
        with open(os.path.join(CRDS_DIR, f)) as fh:
            for crd in yaml.safe_load_all(fh):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for v in spec["versions"]:
                    key = (f"{spec['group']}/{v['name']}", spec["names"]["kind"])
                    crds[key] = {"file": f, "version": v}
    return crds


def apply_defaults(schema, value):
    """Fill in CRD `default`s of absent fields inside present objects (as the
    API server does before validation)."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        ap = schema.get("additionalProperties")
        if isinstance(ap, dict):
            for k in list(value):
                if k not in (schema.get("properties") or {}):
                    value[k] = apply_defaults(ap, value[k])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


class CelStats:
    def __init__(self):
        self.evaluated = 0
        # Transition rules (they compare with `oldSelf`) apply to updates
        # only; a create, which is what these manifests are, never runs them.
        self.transition = 0
        self.failures = []


def to_cel(value):
    if isinstance(value, bool):
        return celpy.celtypes.BoolType(value)
    if isinstance(value, int):
        return celpy.celtypes.IntType(value)
    if isinstance(value, float):
        return celpy.celtypes.DoubleType(value)
    if isinstance(value, str):
        return celpy.celtypes.StringType(value)
    if isinstance(value, list):
        return celpy.celtypes.ListType([to_cel(v) for v in value])
    if isinstance(value, dict):
        return celpy.celtypes.MapType({celpy.celtypes.StringType(k): to_cel(v) for k, v in value.items()})
    return value


def eval_cel(schema, value, where, stats):
    """Evaluate x-kubernetes-validations rules on `value` and below. A rule
    cel-python cannot compile or evaluate is a failure, never a skip: the
    check must not pass on rules it did not run."""
    if not isinstance(schema, dict):
        return
    for rule in schema.get("x-kubernetes-validations") or []:
        text = rule["rule"]
        if "oldSelf" in text:
            stats.transition += 1
            continue
        try:
            env = celpy.Environment()
            ok = env.program(env.compile(text)).evaluate({"self": to_cel(value)})
        except Exception as e:  # noqa: BLE001 - celpy raises several types
            stats.failures.append(f"{where}: CEL rule {text!r} could not be evaluated: {str(e)[:200]}")
            continue
        if isinstance(ok, Exception):
            stats.failures.append(f"{where}: CEL rule {text!r} evaluated to an error: {str(ok)[:200]}")
            continue
        stats.evaluated += 1
        if not bool(ok):
            stats.failures.append(f"{where}: {rule.get('message') or text}")
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                eval_cel(sub, value[name], f"{where}.{name}", stats)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            eval_cel(schema["items"], v, f"{where}[{i}]", stats)


def validate_cr(doc, crds, stats):
    """Errors (list of str) of one custom resource against its CRD."""
    key = (doc["apiVersion"], doc["kind"])
    entry = crds.get(key)
    if entry is None:
        return None  # not a custom resource we have a CRD for
    version = entry["version"]
    errors = []
    if not version.get("served", False):
        errors.append(f"{doc['apiVersion']} {doc['kind']} is not served by the CRD")
    raw = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    # The API server always accepts these at the root, listed or not.
    props = raw.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props.setdefault("metadata", {"type": "object"})
    value = apply_defaults(raw, copy.deepcopy(doc))
    schema = to_json_schema(raw)
    validator = jsonschema.Draft202012Validator(schema)
    for e in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        path = "/".join(str(p) for p in e.absolute_path) or "(root)"
        errors.append(f"{path}: {e.message}")
    eval_cel(raw, value, doc["kind"], stats)
    errors.extend(stats.failures)
    stats.failures = []
    return errors


# ---------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------

def cmd_check():
    crds = load_crds()
    stats = CelStats()
    problems = []
    notes = []
    n_docs = n_crs = 0
    for path, doc in all_docs():
        n_docs += 1
        if not isinstance(doc, dict):
            problems.append(f"{rel(path)}: a document is not a mapping")
            continue
        if "apiVersion" not in doc:
            continue  # an Envoy bootstrap
        if not doc.get("kind") or not (doc.get("metadata") or {}).get("name"):
            problems.append(f"{rel(path)}: {doc.get('kind')} without kind or metadata.name")
            continue
        # YAML/JSON embedded in ConfigMaps (Envoy Gateway's own config, the
        # sidecar's bootstrap override) must parse too.
        if doc["kind"] == "ConfigMap":
            for k, text in (doc.get("data") or {}).items():
                if k.endswith((".yaml", ".yml", ".json")):
                    try:
                        yaml.safe_load(text)
                    except yaml.YAMLError as e:
                        problems.append(f"{rel(path)}: ConfigMap {doc['metadata']['name']} data[{k}]: {e}")
        errors = validate_cr(doc, crds, stats)
        if errors is None:
            continue
        n_crs += 1
        name = f"{rel(path)}: {doc['kind']} {doc['metadata']['name']} ({doc['apiVersion']})"
        if crds[(doc["apiVersion"], doc["kind"])]["version"].get("deprecated"):
            notes.append(f"{name}: API version is deprecated")
        problems.extend(f"{name}: {e}" for e in errors)
    problems.extend(self_tests(crds))
    problems.extend(cross_checks())
    for n in notes:
        print(f"validate.py: note: {n}")
    if problems:
        for p in problems:
            print(f"validate.py: FAIL: {p}")
        return 1
    print(f"validate.py: OK: {len(yaml_files())} files, {n_docs} documents parse; "
          f"{n_crs} custom resources valid against their CRDs; "
          f"CEL rules evaluated {stats.evaluated} (and {stats.transition} transition rules "
          f"which apply to updates only)")
    return 0


def self_tests(crds):
    """The validator must catch a misspelled field and a bad enum value."""
    problems = []
    stats = CelStats()
    epp = find("EnvoyPatchPolicy")
    bad = copy.deepcopy(epp)
    bad["spec"]["jsonPatches"][0]["operaton"] = bad["spec"]["jsonPatches"][0].pop("operation")
    if not any("operaton" in e for e in validate_cr(bad, crds, stats)):
        problems.append("self-test: a misspelled EnvoyPatchPolicy field was not caught")
    bad = copy.deepcopy(epp)
    bad["spec"]["type"] = "MergePatch"
    if not validate_cr(bad, crds, stats):
        problems.append("self-test: a bad EnvoyPatchPolicy type enum was not caught")
    ef = find("EnvoyFilter")
    bad = copy.deepcopy(ef)
    bad["spec"]["configPatches"][0]["match"]["listener"]["portNumbr"] = 6379
    if not any("portNumbr" in e for e in validate_cr(bad, crds, stats)):
        problems.append("self-test: a misspelled EnvoyFilter match field was not caught")
    # Inside patch.value anything goes (preserve-unknown-fields): no error.
    ok = copy.deepcopy(ef)
    ok["spec"]["configPatches"][0]["patch"]["value"]["anything"] = {"x": 1}
    if validate_cr(ok, crds, stats):
        problems.append("self-test: free-form EnvoyFilter patch.value was rejected")
    # CEL: "only one of targetRefs or workloadSelector can be set".
    bad = copy.deepcopy(ef)
    bad["spec"]["targetRefs"] = [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "x"}]
    if not any("only one of targetRefs" in e for e in validate_cr(bad, crds, stats)):
        problems.append("self-test: a violated CEL rule (EnvoyFilter) was not caught")
    # A rule cel-python cannot evaluate fails the check instead of passing.
    broken = copy.deepcopy(crds[(ef["apiVersion"], ef["kind"])])
    broken["version"]["schema"]["openAPIV3Schema"].setdefault("x-kubernetes-validations", []).append(
        {"rule": "self.noSuchFunction()", "message": "unevaluable"})
    if not any("could not be evaluated" in e or "evaluated to an error" in e
               for e in validate_cr(ef, {(ef["apiVersion"], ef["kind"]): broken}, stats)):
        problems.append("self-test: an unevaluable CEL rule was not reported")
    ep = find("EnvoyProxy")
    bad = copy.deepcopy(ep)
    bad["spec"]["provider"]["kubernetes"]["envoyDeployment"]["initContainer"] = []
    if not any("initContainer" in e for e in validate_cr(bad, crds, stats)):
        problems.append("self-test: a misspelled EnvoyProxy field was not caught")
    return problems


def module_filters(listener):
    return [f for fc in listener.get("filter_chains", []) for f in fc.get("filters", [])
            if f.get("name") == MODULE_FILTER]


def check_module_filter(f, where):
    """The module filter as our filter config expects it."""
    problems = []
    tc = f.get("typed_config", {})
    if tc.get("@type") != MODULE_TYPE:
        problems.append(f"{where}: typed_config @type is {tc.get('@type')}")
    if tc.get("filter_name") != "redis_cluster" or tc.get("terminal_filter") is not True:
        problems.append(f"{where}: filter_name must be redis_cluster and terminal_filter true")
    fc = tc.get("filter_config", {})
    if fc.get("@type") != "type.googleapis.com/google.protobuf.Struct":
        problems.append(f"{where}: filter_config must be a google.protobuf.Struct")
    cfg = fc.get("value", {})
    if cfg.get("settings", {}).get("read_policy") != "PREFER_REPLICA":
        problems.append(f"{where}: read_policy is not PREFER_REPLICA")
    mirrors = cfg.get("prefix_routes", {}).get("catch_all_route", {}).get("request_mirror_policy", [])
    if not any(m.get("cluster") == "mirror" and m.get("exclude_read_commands") for m in mirrors):
        problems.append(f"{where}: catch-all route does not mirror writes to 'mirror'")
    if set(cfg.get("clusters", {})) != {"main", "mirror"}:
        problems.append(f"{where}: clusters must be main and mirror")
    return problems


def cross_checks():
    """References between the manifests."""
    p = []
    # Envoy Gateway
    gw = find("Gateway")
    gwc = find("GatewayClass")
    ep = find("EnvoyProxy")
    route = find("TCPRoute")
    epp = find("EnvoyPatchPolicy")
    if gw["spec"]["gatewayClassName"] != gwc["metadata"]["name"]:
        p.append("Gateway does not use the GatewayClass")
    pr = gwc["spec"].get("parametersRef", {})
    if (pr.get("kind"), pr.get("name"), pr.get("namespace")) != (
            "EnvoyProxy", ep["metadata"]["name"], ep["metadata"]["namespace"]):
        p.append("GatewayClass parametersRef does not name the EnvoyProxy")
    tcp = [l for l in gw["spec"]["listeners"] if l["protocol"] == "TCP"]
    if len(tcp) != 1:
        p.append("Gateway must have exactly one TCP listener")
        return p
    listener = tcp[0]
    parent = route["spec"]["parentRefs"][0]
    if parent["name"] != gw["metadata"]["name"] or parent.get("sectionName") != listener["name"]:
        p.append("TCPRoute is not attached to the Gateway's TCP listener")
    if route["metadata"]["namespace"] != gw["metadata"]["namespace"]:
        p.append("TCPRoute and Gateway are in different namespaces")
    want = f"{gw['metadata']['namespace']}/{gw['metadata']['name']}/{listener['name']}"
    tr = epp["spec"]["targetRef"]
    if (tr["kind"], tr["name"]) != ("Gateway", gw["metadata"]["name"]) or \
            epp["metadata"]["namespace"] != gw["metadata"]["namespace"]:
        p.append("EnvoyPatchPolicy does not target the Gateway (same namespace)")
    for jp in epp["spec"]["jsonPatches"]:
        if jp["type"].endswith("Listener") and jp["name"] != want:
            p.append(f"EnvoyPatchPolicy patches listener {jp['name']}, Envoy Gateway generates {want}")
    # the module path mounted by the EnvoyProxy is the one the patch loads
    mounts = ep["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"].get("volumeMounts", [])
    value = epp["spec"]["jsonPatches"][0]["operation"]["value"]
    fname = value["typed_config"]["dynamic_module_config"].get("module", {}).get("local", {}).get("filename")
    if fname and not any(fname.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts):
        p.append(f"EnvoyPatchPolicy loads {fname}, which no EnvoyProxy volumeMount provides")
    p.extend(check_module_filter(value, "EnvoyPatchPolicy value"))
    # Istio
    ef = find("EnvoyFilter")
    client = find("Deployment", "redis-client")
    sel = ef["spec"]["workloadSelector"]["labels"]
    labels = client["spec"]["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in sel.items()):
        p.append("EnvoyFilter workloadSelector does not select the redis-client pods")
    svc = find("Service", "redis-cluster")
    port = ef["spec"]["configPatches"][0]["match"]["listener"]["portNumber"]
    if port not in [x["port"] for x in svc["spec"]["ports"]]:
        p.append(f"EnvoyFilter matches port {port}, the redis-cluster Service has no such port")
    mirror = find("Service", "redis-mirror")
    if port in [x["port"] for x in mirror["spec"]["ports"]]:
        p.append("the mirror Service shares the intercepted port")
    p.extend(check_module_filter(ef["spec"]["configPatches"][0]["patch"]["value"], "EnvoyFilter value"))
    # standalone
    boot = standalone_bootstrap()
    for l in boot["static_resources"]["listeners"]:
        for f in module_filters(l):
            p.extend(check_module_filter(f, "envoy-rw-split-mirror.yaml"))
    p.extend(stats_tags_checks(ep, client))
    return p


def stats_tags(bootstrap, where):
    """The (tag_name, regex) list of a bootstrap's stats_config."""
    tags = ((bootstrap or {}).get("stats_config") or {}).get("stats_tags") or []
    if not tags:
        raise Failure(f"{where}: no stats_config.stats_tags")
    return [(t.get("tag_name"), t.get("regex")) for t in tags]


def stats_tags_checks(ep, client):
    """Every shipped copy of the module's stats_tags is the list in
    envoy-config/standalone/envoy.yaml (which tests/stats.rs runs in Envoy),
    and each mesh manifest actually applies it."""
    p = []
    want = stats_tags(load_docs(os.path.join(CONFIG_DIR, "standalone", "envoy.yaml"))[0],
                      "standalone/envoy.yaml")
    copies = {"standalone/envoy-rw-split-mirror.yaml": standalone_bootstrap()}
    # Envoy Gateway: merged into its default bootstrap.
    boot = ep["spec"].get("bootstrap") or {}
    if boot.get("type") != "Merge":
        p.append("EnvoyProxy bootstrap must be type Merge (Replace would drop Envoy Gateway's own)")
    copies["EnvoyProxy spec.bootstrap.value"] = yaml.safe_load(boot.get("value") or "")
    # Istio: the ConfigMap named by the bootstrapOverride annotation, and a
    # stats matcher that keeps the module's stats at all.
    pod_meta = client["spec"]["template"]["metadata"]
    annotations = pod_meta.get("annotations") or {}
    cm_name = annotations.get("sidecar.istio.io/bootstrapOverride")
    cms = [d for _, d in k8s_docs() if d["kind"] == "ConfigMap"
           and d["metadata"]["name"] == cm_name
           and d["metadata"].get("namespace") == client["metadata"]["namespace"]]
    if len(cms) != 1:
        p.append(f"no ConfigMap {cm_name!r} beside the redis-client Deployment "
                 "(sidecar.istio.io/bootstrapOverride)")
    else:
        text = (cms[0].get("data") or {}).get("custom_bootstrap.json")
        if text is None:
            p.append(f"ConfigMap {cm_name} lacks custom_bootstrap.json (the file istio-agent reads)")
        else:
            copies[f"ConfigMap {cm_name} custom_bootstrap.json"] = yaml.safe_load(text)
    proxy_cfg = yaml.safe_load(annotations.get("proxy.istio.io/config") or "") or {}
    prefixes = (proxy_cfg.get("proxyStatsMatcher") or {}).get("inclusionPrefixes") or []
    if not any("dynamicmodulescustom.redis.redis.cluster.main.upstream_rq_total".startswith(x)
               and "dynamicmodulescustom.redis.redis.command.get.total".startswith(x)
               for x in prefixes):
        p.append("redis-client proxyStatsMatcher.inclusionPrefixes does not keep the module's stats")
    for where, bootstrap in copies.items():
        try:
            got = stats_tags(bootstrap, where)
        except Failure as e:
            p.append(str(e))
            continue
        if got != want:
            p.append(f"{where}: stats_tags differ from standalone/envoy.yaml's: {got} != {want}")
    return p


# ---------------------------------------------------------------------------
# render
# ---------------------------------------------------------------------------

def eg_generated_listener():
    """The xDS Listener Envoy Gateway (default xDS name scheme) generates for
    the Gateway's TCP listener with the TCPRoute attached: one filter chain
    whose only filter is tcp_proxy to the route's cluster."""
    gw = find("Gateway")
    route = find("TCPRoute")
    listener = [l for l in gw["spec"]["listeners"] if l["protocol"] == "TCP"][0]
    ns, name = gw["metadata"]["namespace"], gw["metadata"]["name"]
    port = listener["port"]
    # Privileged ports are shifted by 10000 inside the proxy pod.
    container_port = port + 10000 if port < 1024 else port
    cluster = f"tcproute/{route['metadata']['namespace']}/{route['metadata']['name']}/rule/-1"
    return {
        "name": f"{ns}/{name}/{listener['name']}",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": container_port}},
        "per_connection_buffer_limit_bytes": 32768,
        "filter_chains": [{
            "name": cluster,
            "filters": [{
                "name": TCP_PROXY,
                "typed_config": {"@type": TCP_PROXY_TYPE,
                                 "stat_prefix": f"tcp-{container_port}",
                                 "cluster": cluster},
            }],
        }],
    }


def cmd_render_eg():
    epp = find("EnvoyPatchPolicy")
    listener = eg_generated_listener()
    ops = []
    for jp in epp["spec"]["jsonPatches"]:
        if jp["type"] != "type.googleapis.com/envoy.config.listener.v3.Listener":
            continue
        if jp["name"] != listener["name"]:
            raise Failure(f"patch names listener {jp['name']}, generated is {listener['name']}")
        ops.append(jp["operation"])
    if not ops:
        raise Failure("EnvoyPatchPolicy has no Listener patch")
    patched = jsonpatch.apply_patch(listener, ops)
    if any(f["name"] == TCP_PROXY for fc in patched["filter_chains"] for f in fc["filters"]):
        raise Failure("the tcp_proxy is still there after the patch")
    if len(module_filters(patched)) != 1:
        raise Failure("the patched listener does not have exactly one module filter")
    json.dump(patched, sys.stdout, indent=1)
    return 0


def istio_outbound_listener():
    """An outbound listener as istiod builds it in a client sidecar for the
    redis-cluster Service (TCP port): <ClusterIP>_<port>, not bound (the
    virtual outbound listener hands connections over), one filter chain
    ending in tcp_proxy to the outbound cluster. Istio puts its stats filter
    (istio.stats, not in stock Envoy) before tcp_proxy; a stock
    local_ratelimit filter stands in for it, to show that REPLACE keeps what
    comes before."""
    svc = find("Service", "redis-cluster")
    ns = svc["metadata"]["namespace"]
    port = svc["spec"]["ports"][0]["port"]
    cluster_ip = "10.96.100.42"  # made up: any ClusterIP
    cluster = f"outbound|{port}||{svc['metadata']['name']}.{ns}.svc.cluster.local"
    return {
        "name": f"{cluster_ip}_{port}",
        "address": {"socket_address": {"address": cluster_ip, "port_value": port}},
        "traffic_direction": "OUTBOUND",
        "bind_to_port": False,
        "filter_chains": [{
            "filters": [
                {"name": "envoy.filters.network.local_ratelimit",
                 "typed_config": {
                     "@type": "type.googleapis.com/envoy.extensions.filters.network."
                              "local_ratelimit.v3.LocalRateLimit",
                     "stat_prefix": "istio_stats_stand_in",
                     "token_bucket": {"max_tokens": 1000000, "tokens_per_fill": 1000000,
                                      "fill_interval": "1s"}}},
                {"name": TCP_PROXY,
                 "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": cluster, "cluster": cluster}},
            ],
        }],
    }


def istio_apply(listener, envoyfilter):
    """Apply NETWORK_FILTER patches of an EnvoyFilter the way istiod does for
    a SIDECAR_OUTBOUND listener (only what this EnvoyFilter uses)."""
    port = listener["address"]["socket_address"]["port_value"]
    done = 0
    for cp in envoyfilter["spec"]["configPatches"]:
        if cp["applyTo"] != "NETWORK_FILTER":
            raise Failure(f"applyTo {cp['applyTo']} not simulated")
        m = cp.get("match", {})
        if m.get("context", "ANY") not in ("ANY", "SIDECAR_OUTBOUND"):
            continue
        lm = m.get("listener", {})
        if "portNumber" in lm and lm["portNumber"] != port:
            continue
        if "name" in lm and lm["name"] != listener["name"]:
            continue
        want = lm.get("filterChain", {}).get("filter", {}).get("name")
        op = cp["patch"]["operation"]
        if op != "REPLACE":
            raise Failure(f"operation {op} not simulated")
        for fc in listener["filter_chains"]:
            for i, f in enumerate(fc["filters"]):
                if want is None or f["name"] == want:
                    fc["filters"][i] = copy.deepcopy(cp["patch"]["value"])
                    done += 1
    if done == 0:
        raise Failure("the EnvoyFilter matched nothing in the outbound listener")
    return listener


def cmd_render_istio():
    listener = istio_apply(istio_outbound_listener(), find("EnvoyFilter"))
    if any(f["name"] == TCP_PROXY for fc in listener["filter_chains"] for f in fc["filters"]):
        raise Failure("the tcp_proxy is still there after the REPLACE")
    if len(module_filters(listener)) != 1:
        raise Failure("the patched listener does not have exactly one module filter")
    if listener["filter_chains"][0]["filters"][-1]["name"] != MODULE_FILTER:
        raise Failure("the module is not the chain's last (terminal) filter")
    json.dump(listener, sys.stdout, indent=1)
    return 0


def standalone_bootstrap():
    docs = load_docs(os.path.join(CONFIG_DIR, "standalone", "envoy-rw-split-mirror.yaml"))
    if len(docs) != 1:
        raise Failure("envoy-rw-split-mirror.yaml must hold one document")
    return docs[0]


def cmd_render_standalone():
    json.dump(standalone_bootstrap(), sys.stdout, indent=1)
    return 0


def main(argv):
    cmds = {"check": cmd_check, "render-eg": cmd_render_eg,
            "render-istio": cmd_render_istio, "render-standalone": cmd_render_standalone}
    if len(argv) != 2 or argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return cmds[argv[1]]()
    except Failure as e:
        print(f"validate.py: FAIL: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
