"""A model of the template's network at boot time: can each bootstrap reach what it calls?

CloudFormation creates a resource only after everything it references (Ref, Fn::GetAtt, Fn::Sub
names) and everything in its DependsOn, and nothing else is ordered. A user-data script runs as soon
as its instance exists, so a route, gateway or endpoint it needs must be among those dependencies
(transitively), or the instance may boot before it exists (and a bootstrap that signals through the
internet then times out and rolls the stack back).

For every instance and Auto Scaling group whose user data (its own or its launch template's) calls
AWS, the internet or cfn-signal, and for every subnet it may launch in, the model asks:

* **internet** (AWS APIs, cfn-signal, container registries): the subnet's route table association,
  a 0.0.0.0/0 route and its gateway are dependencies, and either
  - the route goes to the internet gateway, the gateway is attached first, and the instance has a
    public address *at launch* (MapPublicIpOnLaunch or AssociatePublicIpAddress; an Elastic IP
    associated afterwards does not count: it needs the instance to exist), or
  - the route goes to a NAT gateway whose own subnet routes to an attached internet gateway, all
    of it created before the instance.
* **s3** (`aws s3`, and dnf: Amazon Linux 2023 serves its repositories from regional S3 buckets):
  through the S3 gateway endpoint on the subnet's route table, created first. This is the design
  choice the template states (image bytes never cross the NAT gateway), not a reachability fact:
  S3 over the NAT would work, at a data-processing charge per GB.

The check runs once per combination of the parameters with AllowedValues (broker mode, architecture,
deployment mode...; free-form parameters at their defaults): conditional resources are dropped and
Fn::If resolved first, so a dependency that exists in one broker mode only (the self-hosted broker
host's routes, say) never covers for a group in the other.
Link-local (instance metadata, 169.254.169.254) and loopback calls need no route.
"""

import re

from rules import branches, items, props, ref_name, resources, sub_text, user_data_text

PSEUDO = re.compile(r"^AWS::")


# --------------------------------------------------------------------------- dependencies

def _sub_names(text):
    """Resource names an Fn::Sub template string references (${Name} or ${Name.Attr})."""
    return {m.split(".", 1)[0] for m in re.findall(r"\$\{([A-Za-z0-9:.]+)\}", text) if not PSEUDO.match(m)}


def direct_refs(value, names):
    """Logical ids of resources `value` references through Ref, Fn::GetAtt or Fn::Sub."""
    found = set()
    if isinstance(value, dict):
        for key, v in value.items():
            if key == "Ref" and isinstance(v, str):
                found.add(v)
            elif key == "Fn::GetAtt":
                found.add(v[0] if isinstance(v, list) else str(v).split(".", 1)[0])
            elif key == "Fn::Sub":
                text, local = (v[0], v[1]) if isinstance(v, list) else (v, {})
                found |= _sub_names(text) - set(local)
                found |= direct_refs(local, names)
            else:
                found |= direct_refs(v, names)
    elif isinstance(value, list):
        for v in value:
            found |= direct_refs(v, names)
    return found & names


def dependencies(t, name):
    """Every resource CloudFormation must create before `name` (transitive)."""
    res = t["Resources"]
    names = set(res)
    seen, todo = set(), [name]
    while todo:
        cur = todo.pop()
        r = res[cur]
        deps = set(r.get("DependsOn", []) if isinstance(r.get("DependsOn"), list)
                   else [r["DependsOn"]] if r.get("DependsOn") else [])
        deps |= direct_refs(r.get("Properties", {}), names)
        for d in deps - seen:
            seen.add(d)
            todo.append(d)
    seen.discard(name)
    return seen


# --------------------------------------------------------------------------- what a bootstrap calls

CALLS = (
    (re.compile(r"^\s*(?:.*\s)?aws\s+s3(api)?\s", re.M), "s3", "aws s3"),
    (re.compile(r"^\s*(?:.*\s)?(dnf|yum)\s", re.M), "s3", "dnf (AL2023 repositories live in S3)"),
    (re.compile(r"\baws\s+(?!s3(api)?\s)([a-z0-9-]+)\s"), "internet", "aws API"),
    (re.compile(r"cfn-signal"), "internet", "cfn-signal"),
    (re.compile(r"\bdocker\s+(pull|run)\b"), "internet", "container registry"),
    (re.compile(r"\bcurl\b[^\n]*https?://(?!169\.254\.|127\.|localhost)"), "internet", "curl"),
)


def calls(text):
    """{"s3" | "internet": [what]} the user data calls."""
    out = {}
    for pattern, target, what in CALLS:
        if pattern.search(text or ""):
            out.setdefault(target, []).append(what)
    return out


# --------------------------------------------------------------------------- launch placement

def booters(t):
    """(logical id, subnets, public-at-launch flag from the launch template, user data) per booting resource."""
    out = []
    for name, inst in resources(t, "AWS::EC2::Instance").items():
        p = props(inst)
        subnets = [ref_name(s) for s in branches(p.get("SubnetId"))]
        for nic in items(p.get("NetworkInterfaces")):
            subnets += [ref_name(s) for s in branches(nic.get("SubnetId"))]
        out.append((name, [s for s in subnets if s], _lt_public(t, p), user_data_text(t, name)))
    for name, asg in resources(t, "AWS::AutoScaling::AutoScalingGroup").items():
        p = props(asg)
        subnets = [ref_name(s) for s in items(p.get("VPCZoneIdentifier"))]
        out.append((name, [s for s in subnets if s], _lt_public(t, p), user_data_text(t, name)))
    return out


def _lt_public(t, holder_props):
    lt_name = ref_name((holder_props.get("LaunchTemplate") or {}).get("LaunchTemplateId"))
    lt = resources(t, "AWS::EC2::LaunchTemplate").get(lt_name)
    nics = []
    if lt:
        nics += items(props(lt).get("LaunchTemplateData", {}).get("NetworkInterfaces"))
    nics += items(holder_props.get("NetworkInterfaces"))
    return any(str(n.get("AssociatePublicIpAddress")).lower() == "true" for n in nics)


def route_table_of(t, subnet):
    """(route table, association) of a subnet; (None, None) when it uses the VPC's main table."""
    for name, assoc in resources(t, "AWS::EC2::SubnetRouteTableAssociation").items():
        p = props(assoc)
        if ref_name(p.get("SubnetId")) == subnet:
            return ref_name(p.get("RouteTableId")), name
    return None, None


def default_routes(t, table):
    """(route resource, target kind, target id) of the table's 0.0.0.0/0 routes."""
    out = []
    for name, route in resources(t, "AWS::EC2::Route").items():
        p = props(route)
        if ref_name(p.get("RouteTableId")) != table or p.get("DestinationCidrBlock") != "0.0.0.0/0":
            continue
        if "GatewayId" in p:
            out.append((name, "igw", ref_name(p["GatewayId"])))
        elif "NatGatewayId" in p:
            out.append((name, "nat", ref_name(p["NatGatewayId"])))
    return out


def attachment_of(t, igw):
    for name, att in resources(t, "AWS::EC2::VPCGatewayAttachment").items():
        if ref_name(props(att).get("InternetGatewayId")) == igw:
            return name
    return None


# --------------------------------------------------------------------------- the check

def _internet_problems(t, who, subnet, public, deps):
    table, assoc = route_table_of(t, subnet)
    if table is None:
        return [f"{who} in {subnet}: the subnet has no route table of ours (main table: no internet route)"]
    routes = default_routes(t, table)
    if not routes:
        return [f"{who} in {subnet}: route table {table} has no 0.0.0.0/0 route"]
    reasons = []
    if assoc not in deps:
        reasons.append(f"may boot before its route table association {assoc}")
    for route, kind, target in routes:
        found = [f"may boot before route {route}"] if route not in deps else []
        if kind == "igw":
            att = attachment_of(t, target)
            if att is None or att not in deps:
                found.append(f"may boot before {target} is attached to the VPC")
            if not public:
                found.append(f"route {route} goes to the internet gateway but the instance has no public "
                             f"address at launch (MapPublicIpOnLaunch false, no AssociatePublicIpAddress; "
                             f"an Elastic IP is associated only after the instance exists)")
        else:
            nat = resources(t, "AWS::EC2::NatGateway").get(target)
            nat_subnet = ref_name(props(nat).get("SubnetId")) if nat else None
            nat_table, nat_assoc = route_table_of(t, nat_subnet) if nat_subnet else (None, None)
            igw_routes = [(r, g) for r, k, g in default_routes(t, nat_table) if k == "igw"] if nat_table else []
            if nat is None:
                found.append(f"route {route} names an unknown NAT gateway {target}")
            elif not igw_routes:
                found.append(f"NAT gateway {target} sits in {nat_subnet}, which does not route to an internet gateway")
            elif nat_assoc not in deps or not any(r in deps and attachment_of(t, g) in deps for r, g in igw_routes):
                found.append(f"may boot before NAT gateway {target}'s subnet routes to the internet gateway")
        if not found and assoc in deps:
            return []
        reasons += found
    return [f"{who} in {subnet}: no route to the internet at boot: " + "; ".join(reasons)]


def _s3_problems(t, who, subnet, deps):
    table, assoc = route_table_of(t, subnet)
    if table is None or assoc not in deps:
        return [f"{who} in {subnet}: may boot before its route table association (S3 endpoint route)"]
    for name, ep in resources(t, "AWS::EC2::VPCEndpoint").items():
        p = props(ep)
        service = sub_text(p.get("ServiceName")) or ""
        if p.get("VpcEndpointType", "Gateway") != "Gateway" or not service.endswith(".s3"):
            continue
        tables = {ref_name(x) for x in items(p.get("RouteTableIds"))}
        if table in tables:
            if name in deps:
                return []
            return [f"{who} in {subnet}: may boot before the S3 gateway endpoint {name} adds its route"]
    return [f"{who} in {subnet}: no S3 gateway endpoint on route table {table} (S3 would go through the NAT)"]


# --------------------------------------------------------------------------- condition scenarios

def _condition_value(expr, t, params, memo):
    if isinstance(expr, dict):
        (key, arg), = expr.items()
        if key == "Condition":
            return condition(arg, t, params, memo)
        if key == "Ref":
            return params.get(arg, arg)
        if key == "Fn::Equals":
            a, b = (_condition_value(x, t, params, memo) for x in arg)
            return str(a) == str(b)
        if key == "Fn::Not":
            return not _condition_value(arg[0], t, params, memo)
        if key == "Fn::And":
            return all(_condition_value(x, t, params, memo) for x in arg)
        if key == "Fn::Or":
            return any(_condition_value(x, t, params, memo) for x in arg)
        raise ValueError(f"condition function {key} not modelled")
    return expr


def condition(name, t, params, memo):
    if name not in memo:
        memo[name] = bool(_condition_value(t["Conditions"][name], t, params, memo))
    return memo[name]


def _resolve_ifs(value, conds):
    if isinstance(value, dict):
        if set(value) == {"Fn::If"}:
            cond, yes, no = value["Fn::If"]
            return _resolve_ifs(yes if conds[cond] else no, conds)
        return {k: _resolve_ifs(v, conds) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_ifs(v, conds) for v in value if v != {"Ref": "AWS::NoValue"}]
    return value


def scenarios(t):
    """(label, template as deployed) for every combination of the enumerable parameters."""
    pars = t.get("Parameters", {})
    defaults = {k: str(v.get("Default", "")) for k, v in pars.items()}
    enumerable = sorted(k for k, v in pars.items() if v.get("AllowedValues"))
    out = []
    combos = [{}]
    for k in enumerable:
        combos = [dict(c, **{k: str(v)}) for c in combos for v in pars[k]["AllowedValues"]]
    seen = set()
    for combo in combos:
        params = dict(defaults, **combo)
        memo = {}
        conds = {c: condition(c, t, params, memo) for c in t.get("Conditions", {})}
        key = tuple(sorted(conds.items()))
        if key in seen:
            continue
        seen.add(key)
        res = {name: _resolve_ifs(r, conds) for name, r in t["Resources"].items()
               if r.get("Condition") is None or conds[r["Condition"]]}
        label = ",".join(f"{k}={combo[k]}" for k in enumerable if combo[k] != defaults[k]) or "defaults"
        out.append((label, dict(t, Resources=res)))
    return out


def check(t):
    """Problems in any parameter scenario, one string each (with the first scenario it shows in)."""
    problems, seen = [], set()
    for label, deployed in scenarios(t):
        for p in check_deployed(deployed):
            if p not in seen:
                seen.add(p)
                problems.append(f"{p} [{label}]")
    return problems


def check_deployed(t):
    """Problems of one concrete template (no conditions left); empty when every bootstrap has its routes."""
    problems = []
    for name, subnets, lt_public, text in booters(t):
        needs = calls(text)
        if not needs:
            continue
        if not subnets:
            problems.append(f"{name}: calls {needs} but names no subnet")
            continue
        deps = dependencies(t, name)
        for subnet in subnets:
            sn = resources(t, "AWS::EC2::Subnet").get(subnet)
            if sn is None:
                problems.append(f"{name}: unknown subnet {subnet}")
                continue
            if subnet not in deps:
                problems.append(f"{name}: subnet {subnet} is not a dependency")
            public = lt_public or str(props(sn).get("MapPublicIpOnLaunch")).lower() == "true"
            if "internet" in needs:
                problems += _internet_problems(t, name, subnet, public, deps)
            if "s3" in needs:
                problems += _s3_problems(t, name, subnet, deps)
    return problems
