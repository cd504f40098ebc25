//! Would netfilter see traffic between a bridge's ports? `bridge accelerate` refuses (unless
//! forced) when br_netfilter passes bridged traffic through iptables and a rule could drop or
//! change it: the fast path would skip that rule. Reads the rules, changes nothing.

use std::{collections::HashMap, fs, process::Command};

/// With br_netfilter passing bridged traffic through iptables/ip6tables in this namespace, a
/// rule could drop or change traffic between the bridge's ports (Docker's icc=false, rules in
/// DOCKER-USER): the fast path would skip it. Err names the reason.
///
/// The rules are read with `iptables-save`/`ip6tables-save` (read-only); if they cannot be
/// read, we refuse rather than guess.
pub fn netfilter_check(bridge: &str) -> Result<(), String> {
    let on = |f: &str| {
        fs::read_to_string(format!("/proc/sys/net/bridge/{f}"))
            .map(|s| s.trim() == "1")
            .unwrap_or(false)
    };
    for (sysctl, tool) in [
        ("bridge-nf-call-iptables", "iptables-save"),
        ("bridge-nf-call-ip6tables", "ip6tables-save"),
    ] {
        if !on(sysctl) {
            continue;
        }
        let out = Command::new(tool)
            .args(["-t", "filter"])
            .output()
            .map_err(|e| {
                format!("{sysctl}=1 sends bridged traffic through netfilter and {tool} could not be run to check the rules ({e})")
            })?;
        if !out.status.success() {
            return Err(format!(
                "{sysctl}=1 sends bridged traffic through netfilter and {tool} failed to list the rules"
            ));
        }
        let rules = String::from_utf8_lossy(&out.stdout);
        if let Some(rule) = blocking_rule(&rules, bridge) {
            return Err(format!(
                "{sysctl}=1 and the netfilter rule `{rule}` can drop or change traffic between ports of {bridge}"
            ));
        }
        // Hairpin NAT (Docker with --userland-proxy=false): a container's connection to a
        // published port is DNAT'd to another port of the bridge, whose replies are bridged
        // back and un-NAT'd by br_netfilter's conntrack. The fast path would hand the replies
        // over untranslated.
        let nat = Command::new(tool).args(["-t", "nat"]).output().map_err(|e| {
            format!("{sysctl}=1 sends bridged traffic through netfilter and {tool} -t nat could not be run to check the rules ({e})")
        })?;
        if !nat.status.success() {
            return Err(format!(
                "{sysctl}=1 sends bridged traffic through netfilter and {tool} -t nat failed to list the rules"
            ));
        }
        if let Some(rule) = hairpin_dnat_rule(&String::from_utf8_lossy(&nat.stdout), bridge) {
            return Err(format!(
                "{sysctl}=1 and the NAT rule `{rule}` can translate connections from ports of {bridge} to other ports of it (hairpin NAT; Docker's --userland-proxy=false), whose replies the fast path would deliver untranslated"
            ));
        }
    }
    Ok(())
}

/// A DNAT rule of the nat table that can take packets coming in from `bridge` (no `-i`, `-i`
/// the bridge or a wildcard covering it, or `! -i` another interface).
fn hairpin_dnat_rule<'a>(rules: &'a str, bridge: &str) -> Option<&'a str> {
    rules.lines().find(|line| {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.first() != Some(&"-A") || !w.windows(2).any(|p| p == ["-j", "DNAT"]) {
            return false;
        }
        w.iter().position(|x| *x == "-i").is_none_or(|i| {
            let negated = i > 0 && w[i - 1] == "!";
            let same = w.get(i + 1).is_some_and(|v| {
                *v == bridge || v.ends_with('+') && bridge.starts_with(&v[..v.len() - 1])
            });
            same != negated
        })
    })
}

/// A rule that could drop traffic between two ports of `bridge`: walking the filter table
/// from FORWARD for a packet with in = out = `bridge`, following jumps to user chains, the
/// first DROP/REJECT whose interface matches could apply to such a packet. The walk stops at
/// an ACCEPT that takes every such packet (no match but the interfaces); falling off the end
/// of FORWARD means its policy decides, so a DROP policy (Docker sets one) counts as a rule,
/// shown as `-P FORWARD DROP`.
fn blocking_rule<'a>(rules: &'a str, bridge: &str) -> Option<&'a str> {
    let mut chains: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut forward_drops = false;
    for line in rules.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("-A") => {
                if let Some(chain) = w.next() {
                    chains.entry(chain).or_default().push(line);
                }
            }
            Some(":FORWARD") => forward_drops = w.next() == Some("DROP"),
            _ => {}
        }
    }
    let mut seen = Vec::new();
    match walk("FORWARD", &chains, bridge, &mut seen) {
        Walk::Drop(rule) => Some(rule),
        Walk::Accept => None,
        Walk::Return if forward_drops => Some("-P FORWARD DROP"),
        Walk::Return => None,
    }
}

/// How a walk through a chain ends for a packet with in = out = the bridge.
enum Walk<'a> {
    /// This DROP/REJECT rule could apply.
    Drop(&'a str),
    /// Every such packet is accepted here: nothing after counts.
    Accept,
    /// The chain returns (or ends) for some packets: the caller goes on.
    Return,
}

fn walk<'a>(
    chain: &str,
    chains: &HashMap<&str, Vec<&'a str>>,
    bridge: &str,
    seen: &mut Vec<String>,
) -> Walk<'a> {
    if seen.iter().any(|c| c == chain) {
        return Walk::Return;
    }
    seen.push(chain.to_string());
    for line in chains.get(chain).into_iter().flatten() {
        let w: Vec<&str> = line.split_whitespace().collect();
        // Can an interface condition hold for in = out = bridge?
        let holds = |flag: &str| {
            w.iter().position(|x| *x == flag).is_none_or(|i| {
                let negated = i > 0 && w[i - 1] == "!";
                let same = w.get(i + 1).is_some_and(|v| {
                    *v == bridge || v.ends_with('+') && bridge.starts_with(&v[..v.len() - 1])
                });
                same != negated
            })
        };
        if !holds("-i") || !holds("-o") {
            continue;
        }
        let target = w
            .iter()
            .position(|x| *x == "-j" || *x == "-g")
            .and_then(|i| w.get(i + 1))
            .copied();
        // Nothing but `-A CHAIN`, the interfaces (possibly negated) and the target: the rule
        // takes every packet that got this far.
        let unconditional = {
            let mut rest = w.iter().skip(2);
            let mut only = true;
            while let Some(x) = rest.next() {
                match *x {
                    "!" => {}
                    "-i" | "-o" | "-j" | "-g" => {
                        rest.next();
                    }
                    _ => only = false,
                }
            }
            only
        };
        match target {
            Some("DROP") | Some("REJECT") => return Walk::Drop(line),
            Some("ACCEPT") if unconditional => return Walk::Accept,
            Some("RETURN") if unconditional => return Walk::Return,
            Some(t) if chains.contains_key(t) => match walk(t, chains, bridge, seen) {
                Walk::Return => {}
                end => return end,
            },
            _ => {}
        }
    }
    Walk::Return
}

#[cfg(test)]
mod tests {
    use super::blocking_rule;

    const DOCKER: &str = "*filter
:FORWARD DROP [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
";

    #[test]
    fn hairpin_dnat_only_without_the_userland_proxy() {
        use super::hairpin_dnat_rule;
        // Docker's published port with the userland proxy: not from docker0.
        let proxy = "*nat\n-A DOCKER -i docker0 -j RETURN\n-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.3:80\nCOMMIT\n";
        assert_eq!(hairpin_dnat_rule(proxy, "docker0"), None);
        // Without it (--userland-proxy=false): from every interface, docker0 included.
        let hairpin = "*nat\n-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.3:80\nCOMMIT\n";
        assert!(hairpin_dnat_rule(hairpin, "docker0").is_some());
        // A DNAT for traffic from another bridge is irrelevant.
        let other = "-A PREROUTING -i br-1 -j DNAT --to-destination 10.0.0.1\n";
        assert_eq!(hairpin_dnat_rule(other, "docker0"), None);
        assert!(hairpin_dnat_rule(other, "br-1").is_some());
    }

    #[test]
    fn docker_default_allows_intra_bridge() {
        assert_eq!(blocking_rule(DOCKER, "docker0"), None);
    }

    #[test]
    fn docker_icc_false_and_user_rules_refuse() {
        let icc = DOCKER.replace(
            "-A FORWARD -i docker0 -o docker0 -j ACCEPT",
            "-A FORWARD -i docker0 -o docker0 -j DROP",
        );
        assert_eq!(
            blocking_rule(&icc, "docker0"),
            Some("-A FORWARD -i docker0 -o docker0 -j DROP")
        );
        let user = DOCKER.replace(
            "-A DOCKER-USER -j RETURN",
            "-A DOCKER-USER -s 10.0.0.0/8 -j REJECT\n-A DOCKER-USER -j RETURN",
        );
        assert!(blocking_rule(&user, "docker0").is_some());
        // A drop that only applies to another bridge is irrelevant.
        let other = format!("{DOCKER}-A FORWARD -i br-1 -o br-1 -j DROP\n");
        assert_eq!(blocking_rule(&other, "docker0"), None);
        // Policy-free FORWARD with a plain DROP catches everything.
        assert!(blocking_rule("-A FORWARD -j DROP\n", "docker0").is_some());
    }

    #[test]
    fn forward_drop_policy_refuses_unless_the_bridge_is_accepted() {
        // No rule at all, policy DROP: the bridge drops everything between its ports.
        let bare = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\nCOMMIT\n";
        assert_eq!(blocking_rule(bare, "br0"), Some("-P FORWARD DROP"));
        let accept = ":FORWARD ACCEPT [0:0]\n";
        assert_eq!(blocking_rule(accept, "br0"), None);
        // On a Docker host (policy DROP), a bridge Docker does not manage is dropped...
        assert_eq!(blocking_rule(DOCKER, "br0"), Some("-P FORWARD DROP"));
        // ...unless something accepts it; a conditional ACCEPT (only TCP) is not enough.
        let tcp = format!("{DOCKER}-A FORWARD -i br0 -o br0 -p tcp -j ACCEPT\n");
        assert_eq!(blocking_rule(&tcp, "br0"), Some("-P FORWARD DROP"));
        let all = format!("{DOCKER}-A FORWARD -i br0 -o br0 -j ACCEPT\n");
        assert_eq!(blocking_rule(&all, "br0"), None);
        let wildcard = format!("{DOCKER}-A FORWARD -i br+ -j ACCEPT\n");
        assert_eq!(blocking_rule(&wildcard, "br0"), None);
        // An unconditional RETURN in a user chain returns to FORWARD, which goes on.
        let ret = ":FORWARD DROP [0:0]\n-A FORWARD -j U\n-A U -j RETURN\n-A U -j ACCEPT\n";
        assert_eq!(blocking_rule(ret, "br0"), Some("-P FORWARD DROP"));
        // An ACCEPT in a user chain ends the walk.
        let acc = ":FORWARD DROP [0:0]\n-A FORWARD -j U\n-A U -o br0 -j ACCEPT\n";
        assert_eq!(blocking_rule(acc, "br0"), None);
    }
}
