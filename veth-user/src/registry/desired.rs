//! What an endpoint vethfp made is made of, as data: the container side and the node side of
//! routed mode ([`container_side`], [`node_side`]) and the container end's GRO
//! ([`wants_gro`]). `add` creates it, repair (journal recovery, reconciliation, the agent's
//! link-up repair) restores what is missing of it and the agent's unlocked survey counts what
//! is missing — all from these descriptions, through one [`netlink::apply`]. The gateway
//! scheme is policy and lives here; `sys` only knows how to apply a [`LinkConfig`].

use std::net::IpAddr;

use veth_common::{EndpointRecord, Hook, MODE_XDP, Program};

use crate::{
    sys::netlink::{GATEWAY_V4, GATEWAY_V6, LinkConfig, Neighbour, Route},
    types::{Cidr, Mac},
};

/// The container end: its addresses (own prefix, no prefix route; v6 without DAD), the
/// link-local gateways 169.254.1.1 / fe80::1 as permanent neighbours → the host end's MAC
/// (no ARP/ND needed), an on-link route to 169.254.1.1, and the default routes via the
/// gateways (after the on-link route: the v4 default resolves through it). A family without
/// an address gets no gateway.
pub fn container_side(addrs: &[Cidr], host_mac: Mac) -> LinkConfig {
    let mut cfg = LinkConfig {
        addrs: addrs.to_vec(),
        ..Default::default()
    };
    if addrs.iter().any(Cidr::is_v4) {
        let gw = IpAddr::V4(GATEWAY_V4);
        cfg.neighbours.push(Neighbour {
            addr: gw,
            mac: host_mac,
        });
        cfg.routes.push(Route {
            dst: gw,
            prefix: 32,
            via: None,
        });
        cfg.routes.push(Route {
            dst: std::net::Ipv4Addr::UNSPECIFIED.into(),
            prefix: 0,
            via: Some(gw),
        });
    }
    if addrs.iter().any(|a| !a.is_v4()) {
        let gw = IpAddr::V6(GATEWAY_V6);
        cfg.neighbours.push(Neighbour {
            addr: gw,
            mac: host_mac,
        });
        cfg.routes.push(Route {
            dst: std::net::Ipv6Addr::UNSPECIFIED.into(),
            prefix: 0,
            via: Some(gw),
        });
    }
    cfg
}

/// The node side, on the host end: per container address a /32 (/128) route and a permanent
/// neighbour → the container end's MAC, so the kernel path reaches the container too.
pub fn node_side(addrs: &[Cidr], container_mac: Mac) -> LinkConfig {
    LinkConfig {
        addrs: Vec::new(),
        neighbours: addrs
            .iter()
            .map(|a| Neighbour {
                addr: a.addr,
                mac: container_mac,
            })
            .collect(),
        routes: addrs
            .iter()
            .map(|a| Route {
                dst: a.addr,
                prefix: a.host_prefix(),
                via: None,
            })
            .collect(),
    }
}

/// The GRO setting an endpoint's container end should have: on only in `xdp` mode (see
/// [`super::container_gro`]).
pub(crate) fn wants_gro(rec: &EndpointRecord) -> bool {
    rec.target.mode == MODE_XDP
}

/// The hooks of an endpoint and the programs this build runs there (what repair and
/// reconciliation attach when missing or another build's): the L2 program at tc
/// ingress of a bridge port, the L3 one otherwise; XDP in `xdp` mode.
pub(crate) fn hooks(rec: &EndpointRecord) -> Vec<(Hook, Program)> {
    let bridge_port = rec.flags & veth_common::EP_BRIDGE_PORT != 0;
    let mode = if rec.target.mode == MODE_XDP {
        veth_common::Mode::Xdp
    } else {
        veth_common::Mode::Tc
    };
    Hook::of_endpoint(mode)
        .iter()
        .map(|h| (*h, h.program_for(bridge_port)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::sys::netlink::{
        Apply, NetlinkError, Place,
        apply::{Iface, apply_with, plan},
        fake::FakeKernel,
    };

    const HOST_MAC: Mac = Mac([0x02, 0xfe, 0, 0, 0, 1]);
    const CTR_MAC: Mac = Mac([0x02, 0xaa, 0, 0, 0, 2]);
    const CTR: u32 = 2;
    const HOST: u32 = 9;

    fn cidrs(s: &[&str]) -> Vec<Cidr> {
        s.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn dual() -> Vec<Cidr> {
        cidrs(&["10.0.0.2/24", "fd00::2/64"])
    }

    fn ctr() -> Iface<'static> {
        Iface::Name("eth0", Place::Netns("pod".into()))
    }

    /// A new pair: the container end (ifindex 2, down) and the host end (9, down).
    fn new_pair() -> (FakeKernel, FakeKernel) {
        (
            FakeKernel::with_link(CTR, "eth0", false),
            FakeKernel::with_link(HOST, "vfa0", false),
        )
    }

    /// `add`'s kernel part over the fakes.
    fn add(c: &mut FakeKernel, n: &mut FakeKernel, addrs: &[Cidr]) -> Result<(), NetlinkError> {
        apply_with(c, ctr(), &container_side(addrs, HOST_MAC), Apply::Create)?;
        apply_with(
            n,
            Iface::Index(HOST),
            &node_side(addrs, CTR_MAC),
            Apply::Create,
        )?;
        Ok(())
    }

    #[test]
    fn container_side_is_addresses_gateways_and_default_routes() {
        let c = container_side(&dual(), HOST_MAC);
        assert_eq!(c.addrs, dual());
        let gw4 = IpAddr::V4(GATEWAY_V4);
        let gw6 = IpAddr::V6(GATEWAY_V6);
        assert_eq!(
            c.neighbours,
            vec![
                Neighbour {
                    addr: gw4,
                    mac: HOST_MAC
                },
                Neighbour {
                    addr: gw6,
                    mac: HOST_MAC
                }
            ]
        );
        let routes: Vec<_> = c.routes.iter().map(|r| (r.dst, r.prefix, r.via)).collect();
        assert_eq!(
            routes,
            vec![
                (gw4, 32, None),
                (Ipv4Addr::UNSPECIFIED.into(), 0, Some(gw4)),
                (Ipv6Addr::UNSPECIFIED.into(), 0, Some(gw6)),
            ]
        );
    }

    #[test]
    fn a_family_without_address_gets_no_gateway() {
        let v4 = container_side(&cidrs(&["10.0.0.2/32"]), HOST_MAC);
        assert!(v4.routes.iter().all(|r| r.dst.is_ipv4()));
        assert!(v4.neighbours.iter().all(|n| n.addr.is_ipv4()));
        let v6 = container_side(&cidrs(&["fd00::2/128"]), HOST_MAC);
        assert_eq!(v6.routes.len(), 1);
        assert!(v6.neighbours.iter().all(|n| n.addr.is_ipv6()));
    }

    #[test]
    fn node_side_is_a_host_route_and_neighbour_per_address() {
        let n = node_side(&dual(), CTR_MAC);
        assert!(n.addrs.is_empty());
        let routes: Vec<_> = n.routes.iter().map(|r| (r.dst, r.prefix, r.via)).collect();
        assert_eq!(
            routes,
            vec![
                ("10.0.0.2".parse().unwrap(), 32, None),
                ("fd00::2".parse().unwrap(), 128, None)
            ]
        );
        assert!(n.neighbours.iter().all(|x| x.mac == CTR_MAC));
        assert_eq!(n.neighbours.len(), 2);
    }

    #[test]
    fn add_creates_the_described_state() {
        let (mut c, mut n) = new_pair();
        add(&mut c, &mut n, &dual()).unwrap();
        let want = container_side(&dual(), HOST_MAC);
        let l = c.link(CTR);
        assert!(l.up);
        assert_eq!(l.addrs, want.addrs);
        assert_eq!(l.neighbours, want.neighbours);
        assert_eq!(l.routes, want.routes);
        let want = node_side(&dual(), CTR_MAC);
        let l = n.link(HOST);
        assert!(l.up);
        assert_eq!(l.neighbours, want.neighbours);
        assert_eq!(l.routes, want.routes);
    }

    #[test]
    fn add_failing_at_each_step_stops_there_and_the_undo_leaves_nothing() {
        let steps_c = plan(&container_side(&dual(), HOST_MAC), None).len();
        let steps_n = plan(&node_side(&dual(), CTR_MAC), None).len();
        for k in 0..steps_c + steps_n {
            let (mut c, mut n) = new_pair();
            if k < steps_c {
                c.fail_at = Some(k);
            } else {
                n.fail_at = Some(k - steps_c);
            }
            let e = add(&mut c, &mut n, &dual()).unwrap_err();
            assert!(
                matches!(
                    e,
                    NetlinkError::Netlink {
                        errno: Some(libc::EPERM),
                        ..
                    }
                ),
                "step {k}: {e:?}"
            );
            // Nothing after the failing step was attempted.
            assert_eq!(c.changes + n.changes, k + 1, "step {k}");
            // The registry's undo of the kernel part: the veth pair goes, and with it
            // everything made on either end.
            c.delete(CTR);
            n.delete(HOST);
            assert!(c.links.is_empty() && n.links.is_empty());
        }
    }

    #[test]
    fn repair_is_a_no_op_when_complete() {
        let (mut c, mut n) = new_pair();
        add(&mut c, &mut n, &dual()).unwrap();
        let (before_c, before_n) = (c.changes, n.changes);
        let want = container_side(&dual(), HOST_MAC);
        assert_eq!(
            apply_with(&mut c, ctr(), &want, Apply::Repair)
                .unwrap()
                .total(),
            0
        );
        let want = node_side(&dual(), CTR_MAC);
        let r = apply_with(&mut n, Iface::Index(HOST), &want, Apply::Repair).unwrap();
        assert_eq!(r.total(), 0);
        assert_eq!((c.changes, n.changes), (before_c, before_n));
    }

    #[test]
    fn repair_restores_a_deleted_route_address_or_neighbour() {
        let want_c = container_side(&dual(), HOST_MAC);
        let want_n = node_side(&dual(), CTR_MAC);
        type Break = fn(&mut FakeKernel, &mut FakeKernel);
        let cases: [(&str, Break); 5] = [
            ("container default route", |c, _| {
                c.link_mut(CTR).routes.remove(1);
            }),
            ("container address", |c, _| {
                c.link_mut(CTR).addrs.remove(0);
            }),
            ("container gateway neighbour", |c, _| {
                c.link_mut(CTR).neighbours.remove(1);
            }),
            ("node route", |_, n| {
                n.link_mut(HOST).routes.remove(0);
            }),
            ("node neighbour with a wrong MAC", |_, n| {
                n.link_mut(HOST).neighbours[1].mac = Mac([0x02, 0, 0, 0, 0, 0x99])
            }),
        ];
        for (what, break_it) in cases {
            let restored = 1;
            let (mut c, mut n) = new_pair();
            add(&mut c, &mut n, &dual()).unwrap();
            let (good_c, good_n) = (c.link(CTR).clone(), n.link(HOST).clone());
            break_it(&mut c, &mut n);
            let missing = apply_with(&mut c, ctr(), &want_c, Apply::Count)
                .unwrap()
                .total()
                + apply_with(&mut n, Iface::Index(HOST), &want_n, Apply::Count)
                    .unwrap()
                    .total();
            assert_eq!(missing, restored, "{what}: counted");
            let done = apply_with(&mut c, ctr(), &want_c, Apply::Repair)
                .unwrap()
                .total()
                + apply_with(&mut n, Iface::Index(HOST), &want_n, Apply::Repair)
                    .unwrap()
                    .total();
            assert_eq!(done, restored, "{what}: restored");
            let sorted = |mut l: crate::sys::netlink::fake::FakeLink| {
                l.addrs.sort_by_key(|a| a.addr);
                l.neighbours.sort_by_key(|x| x.addr);
                l.routes.sort_by_key(|r| (r.dst, r.prefix));
                l
            };
            assert_eq!(sorted(c.link(CTR).clone()), sorted(good_c), "{what}");
            assert_eq!(sorted(n.link(HOST).clone()), sorted(good_n), "{what}");
        }
    }

    #[test]
    fn repair_leaves_a_downed_container_end_alone() {
        let (mut c, mut n) = new_pair();
        add(&mut c, &mut n, &dual()).unwrap();
        c.link_mut(CTR).up = false;
        c.link_mut(CTR).routes.clear();
        let want = container_side(&dual(), HOST_MAC);
        assert_eq!(
            apply_with(&mut c, ctr(), &want, Apply::Repair)
                .unwrap()
                .total(),
            0
        );
        assert!(c.link(CTR).routes.is_empty());
    }

    #[test]
    fn hooks_follow_the_mode_and_the_kind() {
        let mut rec = EndpointRecord::default();
        let h = hooks(&rec);
        assert_eq!(
            h,
            [
                (Hook::TcIngress, Program::TcIngress),
                (Hook::TcEgress, Program::TcEgress)
            ]
        );
        rec.target.mode = MODE_XDP;
        assert_eq!(hooks(&rec).last(), Some(&(Hook::Xdp, Program::Xdp)));
        rec.target.mode = veth_common::MODE_TC;
        rec.flags |= veth_common::EP_BRIDGE_PORT;
        assert_eq!(hooks(&rec)[0], (Hook::TcIngress, Program::L2Ingress));
    }

    #[test]
    fn gro_follows_the_mode() {
        let mut rec = EndpointRecord::default();
        rec.target.mode = MODE_XDP;
        assert!(wants_gro(&rec));
        rec.target.mode = veth_common::MODE_TC;
        assert!(!wants_gro(&rec));
    }
}
