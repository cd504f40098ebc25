//! Applying a described configuration of one interface — its addresses, permanent
//! neighbours and routes — in the node or inside a container's namespace. The description is
//! the registry's (`registry/desired.rs`: what an endpoint is made of); this file only knows
//! how to make it so, in one of three ways ([`Apply`]): create all of it, restore what is
//! missing, or count what is missing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags},
    neighbour::NeighbourState,
    route::{RouteMessage, RouteScope},
};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::{
    NetlinkError, Netns, NodeView, check_ifname, errno, get_link, in_netns, link_addrs, nl_msg,
    run, vethfp_route,
};
use crate::types::{Cidr, Mac};

/// One interface's configuration as vethfp wants it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkConfig {
    /// Addresses with their own prefix, no prefix route, v6 without DAD.
    pub addrs: Vec<Cidr>,
    /// Permanent neighbour entries.
    pub neighbours: Vec<Neighbour>,
    /// Main-table routes out of the interface (proto vethfp), created in this order.
    pub routes: Vec<Route>,
}

/// A permanent neighbour entry: `addr` resolves to `mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub addr: IpAddr,
    pub mac: Mac,
}

/// A route `dst/prefix` out of the interface, via `via` or on-link (IPv4 on-link routes get
/// scope link; IPv6 routes have no scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub via: Option<IpAddr>,
}

impl Route {
    fn message(&self, ifindex: u32) -> RouteMessage {
        match self.dst {
            IpAddr::V4(dst) => {
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new();
                if self.prefix != 0 {
                    b = b.destination_prefix(dst, self.prefix);
                }
                b = match self.via {
                    Some(IpAddr::V4(gw)) => b.gateway(gw),
                    _ => b.scope(RouteScope::Link),
                };
                vethfp_route(b).output_interface(ifindex).build()
            }
            IpAddr::V6(dst) => {
                let mut b = RouteMessageBuilder::<Ipv6Addr>::new();
                if self.prefix != 0 {
                    b = b.destination_prefix(dst, self.prefix);
                }
                if let Some(IpAddr::V6(gw)) = self.via {
                    b = b.gateway(gw);
                }
                vethfp_route(b).output_interface(ifindex).build()
            }
        }
    }

    fn describe(&self, what: &str) -> String {
        match self.via {
            Some(gw) if self.prefix == 0 => format!("default via {gw} dev {what}"),
            Some(gw) => format!("{}/{} via {gw} dev {what}", self.dst, self.prefix),
            None => format!("{}/{} dev {what}", self.dst, self.prefix),
        }
    }
}

/// How [`apply`] treats what exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// A new interface: set it up and create everything; any failure is returned (the caller
    /// undoes by deleting the interface, which takes all of it along).
    Create,
    /// A live interface: restore what is missing, never remove or replace anything else (a
    /// route someone else put in the same place is left as it is). Does nothing while the
    /// interface is down or gone.
    Repair,
    /// [`Apply::Repair`] without changing anything: count what is missing.
    Count,
}

/// Where the interface is.
#[derive(Debug, Clone, Copy)]
pub enum At<'a> {
    /// In the node (the calling thread's namespace), by ifindex.
    Node(u32),
    /// In a container's namespace, by name.
    Container(&'a Netns, &'a str),
}

/// What [`apply`] created, restored or (with [`Apply::Count`]) found missing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub addrs: usize,
    pub neighbours: usize,
    pub routes: usize,
}

impl Applied {
    pub fn total(&self) -> usize {
        self.addrs + self.neighbours + self.routes
    }

    fn count(&mut self, step: &Step) {
        match step {
            Step::Addr(_) => self.addrs += 1,
            Step::Neighbour(_) => self.neighbours += 1,
            Step::Route(_) => self.routes += 1,
            Step::Up => {}
        }
    }
}

impl NodeView {
    /// How much of `cfg`'s neighbours and routes on `ifindex` this view lacks (addresses are
    /// not in a view). No syscall.
    pub fn missing(&self, ifindex: u32, cfg: &LinkConfig) -> usize {
        let neighbours = cfg
            .neighbours
            .iter()
            .filter(|n| !self.has_neighbour(ifindex, n))
            .count();
        let routes = cfg
            .routes
            .iter()
            .filter(|r| !self.has_route(ifindex, r))
            .count();
        neighbours + routes
    }

    fn has_neighbour(&self, ifindex: u32, n: &Neighbour) -> bool {
        self.neigh_map
            .get(&(ifindex, n.addr))
            .is_some_and(|ll| ll[..] == n.mac.0[..])
    }

    fn has_route(&self, ifindex: u32, r: &Route) -> bool {
        self.route_set.contains(&(ifindex, r.dst, r.prefix))
    }
}

/// Makes the interface at `at` look like `cfg`, the way `how` says. `view`: the node's
/// routes and neighbours dumped earlier in the same pass (node side only; None: dump now).
pub fn apply(
    at: At<'_>,
    cfg: &LinkConfig,
    how: Apply,
    view: Option<&NodeView>,
) -> Result<Applied, NetlinkError> {
    match at {
        At::Node(ifindex) => apply_with(&mut Rtnl { view }, Iface::Index(ifindex), cfg, how),
        At::Container(ns, ifname) => {
            check_ifname(ifname)?;
            // The namespace's own routes and neighbours, dumped inside it when needed.
            in_netns(ns, || {
                let iface = Iface::Name(ifname, ns.place());
                apply_with(&mut Rtnl { view: None }, iface, cfg, how)
            })
        }
    }
}

/// The interface [`apply`] works on: by ifindex in the node, by name in a container.
#[derive(Debug, Clone)]
pub enum Iface<'a> {
    Index(u32),
    Name(&'a str, super::Place),
}

/// One thing [`apply`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Addr(Cidr),
    Up,
    Neighbour(Neighbour),
    Route(Route),
}

/// What is on one interface now, as far as [`plan`] looks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Present {
    pub addrs: Vec<IpAddr>,
    pub neighbours: Vec<Neighbour>,
    /// (destination, prefix length).
    pub routes: Vec<(IpAddr, u8)>,
}

/// The steps that make an interface look like `cfg`. A new interface (`present` None) gets
/// all of it, set up after its addresses and before neighbours and routes (the kernel refuses
/// routes via a down device and flushes neighbours when it goes down); a live one only what
/// is missing. Routes keep their order: a default route resolves through the on-link one.
pub fn plan(cfg: &LinkConfig, present: Option<&Present>) -> Vec<Step> {
    let Some(p) = present else {
        let mut steps: Vec<Step> = cfg.addrs.iter().copied().map(Step::Addr).collect();
        steps.push(Step::Up);
        steps.extend(cfg.neighbours.iter().copied().map(Step::Neighbour));
        steps.extend(cfg.routes.iter().copied().map(Step::Route));
        return steps;
    };
    let addrs = cfg.addrs.iter().filter(|a| !p.addrs.contains(&a.addr));
    let neighbours = cfg.neighbours.iter().filter(|n| !p.neighbours.contains(n));
    let routes = cfg
        .routes
        .iter()
        .filter(|r| !p.routes.contains(&(r.dst, r.prefix)));
    addrs
        .copied()
        .map(Step::Addr)
        .chain(neighbours.copied().map(Step::Neighbour))
        .chain(routes.copied().map(Step::Route))
        .collect()
}

/// An interface as the kernel shows it to [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub ifindex: u32,
    pub name: String,
    pub up: bool,
}

/// A step the kernel refused: its errno, if it gave one, and what that means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub errno: Option<i32>,
    pub msg: String,
}

/// The kernel as [`apply`] sees one interface: the seam between the plan and the syscalls.
/// [`Rtnl`] is the real one; the unit tests use an in-memory fake.
pub trait LinkKernel {
    /// The interface, None if it is gone.
    fn find(&mut self, iface: &Iface<'_>) -> Result<Option<Found>, NetlinkError>;
    /// What is on it now (addresses only if `addrs`).
    fn present(&mut self, ifindex: u32, addrs: bool) -> Result<Present, NetlinkError>;
    /// Makes one step; `replace`: a neighbour entry replaces one with another MAC.
    fn make(&mut self, ifindex: u32, step: &Step, replace: bool) -> Result<(), StepError>;
}

/// [`apply`] over any [`LinkKernel`].
pub fn apply_with<K: LinkKernel>(
    k: &mut K,
    iface: Iface<'_>,
    cfg: &LinkConfig,
    how: Apply,
) -> Result<Applied, NetlinkError> {
    if let Some(n) = cfg.neighbours.iter().find(|n| !n.mac.is_unicast()) {
        return Err(NetlinkError::InvalidMac(n.mac));
    }
    let mut done = Applied::default();
    let create = how == Apply::Create;
    let in_node = matches!(iface, Iface::Index(_));
    let (ifindex, what, present) = match (&iface, create) {
        (Iface::Index(i), true) => (*i, format!("interface index {i} in the node"), None),
        (Iface::Name(name, place), true) => {
            let f = k.find(&iface)?.ok_or_else(|| NetlinkError::NoSuchLink {
                name: (*name).into(),
                place: place.clone(),
            })?;
            (f.ifindex, format!("'{name}' in {place}"), None)
        }
        (_, false) => {
            // Gone, or down (the user's doing, or the container going away): the kernel
            // would flush what we restored again.
            let Some(f) = k.find(&iface)?.filter(|f| f.up) else {
                return Ok(done);
            };
            let what = match &iface {
                Iface::Index(_) => format!("{} in the node", f.name),
                Iface::Name(name, place) => format!("'{name}' in {place}"),
            };
            let present = k.present(f.ifindex, !cfg.addrs.is_empty())?;
            (f.ifindex, what, Some(present))
        }
    };
    let verb = if create { "adding" } else { "restoring" };
    for step in plan(cfg, present.as_ref()) {
        if how == Apply::Count {
            done.count(&step);
            continue;
        }
        match k.make(ifindex, &step, !create) {
            Ok(()) => done.count(&step),
            // Someone else put it there meanwhile: not ours to replace.
            Err(e) if !create && e.errno == Some(libc::EEXIST) => {}
            Err(e)
                if in_node && e.errno == Some(libc::EEXIST) && matches!(step, Step::Route(_)) =>
            {
                let Step::Route(r) = step else { unreachable!() };
                return Err(NetlinkError::RouteExists {
                    dst: format!("{}/{}", r.dst, r.prefix),
                });
            }
            Err(e) => {
                let op = match step {
                    Step::Addr(a) => format!("{verb} address {a} on {what}"),
                    Step::Up => format!("setting {what} up"),
                    Step::Neighbour(n) => {
                        format!("{verb} neighbour {} -> {} on {what}", n.addr, n.mac)
                    }
                    Step::Route(r) => format!("{verb} route {}", r.describe(&what)),
                };
                return Err(NetlinkError::Netlink {
                    op,
                    msg: e.msg,
                    errno: e.errno,
                });
            }
        }
    }
    Ok(done)
}

/// The real [`LinkKernel`]: rtnetlink in the calling thread's namespace. `view`: the node's
/// routes and neighbours dumped earlier in the same pass (None: dumped when needed).
pub struct Rtnl<'v> {
    pub view: Option<&'v NodeView>,
}

impl LinkKernel for Rtnl<'_> {
    fn find(&mut self, iface: &Iface<'_>) -> Result<Option<Found>, NetlinkError> {
        let l = match iface {
            Iface::Index(i) => {
                let i = *i;
                run(|h| async move { get_link(&h, None, i).await })?
            }
            Iface::Name(name, _) => run(|h| async move { get_link(&h, Some(name), 0).await })?,
        };
        Ok(l.map(|l| Found {
            ifindex: l.ifindex,
            name: l.name,
            up: l.up,
        }))
    }

    fn present(&mut self, ifindex: u32, addrs: bool) -> Result<Present, NetlinkError> {
        let fresh;
        let view = match self.view {
            Some(v) => v,
            None => {
                fresh = NodeView::dump()?;
                &fresh
            }
        };
        let addrs = if addrs {
            let what = format!("ifindex {ifindex}");
            run(|h| async move { link_addrs(&h, ifindex, &what).await })?
                .into_iter()
                .map(|c| c.addr)
                .collect()
        } else {
            Vec::new()
        };
        Ok(Present {
            addrs,
            neighbours: view
                .neigh_map
                .iter()
                .filter(|((i, _), ll)| *i == ifindex && ll.len() == 6)
                .map(|((_, addr), ll)| Neighbour {
                    addr: *addr,
                    mac: Mac([ll[0], ll[1], ll[2], ll[3], ll[4], ll[5]]),
                })
                .collect(),
            routes: view
                .route_set
                .iter()
                .filter(|(oif, _, _)| *oif == ifindex)
                .map(|(_, dst, len)| (*dst, *len))
                .collect(),
        })
    }

    fn make(&mut self, ifindex: u32, step: &Step, replace: bool) -> Result<(), StepError> {
        let step = *step;
        let r = run(|h| async move {
            let r = match step {
                Step::Addr(a) => {
                    let mut flags = AddressFlags::Noprefixroute;
                    if !a.is_v4() {
                        flags |= AddressFlags::Nodad;
                    }
                    let mut add = h.address().add(ifindex, a.addr, a.prefix);
                    add.message_mut()
                        .attributes
                        .push(AddressAttribute::Flags(flags));
                    add.execute().await
                }
                Step::Up => {
                    h.link()
                        .change(LinkUnspec::new_with_index(ifindex).up().build())
                        .execute()
                        .await
                }
                Step::Neighbour(n) => {
                    let mut add = h
                        .neighbours()
                        .add(ifindex, n.addr)
                        .state(NeighbourState::Permanent)
                        .link_layer_address(&n.mac.0);
                    if replace {
                        add = add.replace();
                    }
                    add.execute().await
                }
                Step::Route(r) => h.route().add(r.message(ifindex)).execute().await,
            };
            Ok(r)
        });
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StepError {
                errno: errno(&e),
                msg: nl_msg(&e),
            }),
            Err(e) => Err(StepError {
                errno: None,
                msg: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::fake::FakeKernel;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    const MAC: Mac = Mac([0x02, 0, 0, 0, 0, 1]);

    fn cfg() -> LinkConfig {
        let gw: IpAddr = "169.254.1.1".parse().unwrap();
        LinkConfig {
            addrs: vec![cidr("10.0.0.2/24")],
            neighbours: vec![Neighbour { addr: gw, mac: MAC }],
            routes: vec![
                Route {
                    dst: gw,
                    prefix: 32,
                    via: None,
                },
                Route {
                    dst: Ipv4Addr::UNSPECIFIED.into(),
                    prefix: 0,
                    via: Some(gw),
                },
            ],
        }
    }

    #[test]
    fn plan_for_a_new_interface_is_all_of_it_up_after_the_addresses() {
        let c = cfg();
        let steps = plan(&c, None);
        assert_eq!(
            steps,
            vec![
                Step::Addr(c.addrs[0]),
                Step::Up,
                Step::Neighbour(c.neighbours[0]),
                Step::Route(c.routes[0]),
                Step::Route(c.routes[1]),
            ]
        );
    }

    #[test]
    fn plan_for_a_live_interface_is_what_is_missing() {
        let c = cfg();
        let mut p = Present {
            addrs: vec![c.addrs[0].addr],
            neighbours: c.neighbours.clone(),
            routes: c.routes.iter().map(|r| (r.dst, r.prefix)).collect(),
        };
        assert!(plan(&c, Some(&p)).is_empty());
        p.routes.remove(1);
        assert_eq!(plan(&c, Some(&p)), vec![Step::Route(c.routes[1])]);
        // A neighbour with another MAC is missing too.
        p.neighbours[0].mac = Mac([0x02, 0, 0, 0, 0, 9]);
        assert_eq!(plan(&c, Some(&p)).len(), 2);
    }

    #[test]
    fn count_changes_nothing() {
        let mut k = FakeKernel::with_link(7, "eth0", true);
        let n = apply_with(&mut k, Iface::Index(7), &cfg(), Apply::Count).unwrap();
        assert_eq!(n.total(), 4);
        assert_eq!(k.changes, 0);
        assert!(k.link(7).addrs.is_empty());
    }

    #[test]
    fn repair_does_nothing_on_a_down_or_gone_interface() {
        let mut k = FakeKernel::with_link(7, "eth0", false);
        let n = apply_with(&mut k, Iface::Index(7), &cfg(), Apply::Repair).unwrap();
        assert_eq!(n, Applied::default());
        let n = apply_with(&mut k, Iface::Index(8), &cfg(), Apply::Repair).unwrap();
        assert_eq!(n, Applied::default());
        assert_eq!(k.changes, 0);
    }

    #[test]
    fn repair_leaves_a_route_someone_else_added_meanwhile() {
        let mut k = FakeKernel::with_link(7, "eth0", true);
        k.link_mut(7).routes.push(cfg().routes[0]);
        // Present says the default route is missing; the kernel answers EEXIST for it.
        let mut c = cfg();
        c.routes.push(c.routes[0]);
        let n = apply_with(&mut k, Iface::Index(7), &c, Apply::Repair).unwrap();
        assert_eq!(n.routes, 1);
    }

    #[test]
    fn node_create_names_a_route_that_exists_already() {
        let mut k = FakeKernel::with_link(7, "vfa0", false);
        let dst: IpAddr = "10.0.0.2".parse().unwrap();
        let r = Route {
            dst,
            prefix: 32,
            via: None,
        };
        k.link_mut(7).routes.push(r);
        let c = LinkConfig {
            routes: vec![r],
            ..Default::default()
        };
        let e = apply_with(&mut k, Iface::Index(7), &c, Apply::Create).unwrap_err();
        assert!(
            matches!(&e, NetlinkError::RouteExists { dst } if dst == "10.0.0.2/32"),
            "{e:?}"
        );
    }

    #[test]
    fn container_create_wants_the_interface() {
        let mut k = FakeKernel::default();
        let iface = Iface::Name("eth0", super::super::Place::Node);
        let e = apply_with(&mut k, iface, &cfg(), Apply::Create).unwrap_err();
        assert!(matches!(e, NetlinkError::NoSuchLink { .. }), "{e:?}");
    }

    #[test]
    fn a_multicast_neighbour_mac_is_refused_before_any_change() {
        let mut k = FakeKernel::with_link(7, "eth0", true);
        let mut c = cfg();
        c.neighbours[0].mac = Mac([0x01, 0, 0x5e, 0, 0, 1]);
        let e = apply_with(&mut k, Iface::Index(7), &c, Apply::Create).unwrap_err();
        assert!(matches!(e, NetlinkError::InvalidMac(_)), "{e:?}");
        assert_eq!(k.changes, 0);
    }

    #[test]
    fn node_view_missing_counts_routes_and_neighbours() {
        let c = cfg();
        let mut v = NodeView::default();
        assert_eq!(v.missing(7, &c), 3);
        v.route_set.insert((7, c.routes[0].dst, 32));
        v.route_set.insert((7, c.routes[1].dst, 0));
        v.neigh_map
            .insert((7, c.neighbours[0].addr), MAC.0.to_vec());
        assert_eq!(v.missing(7, &c), 0);
        assert_eq!(v.missing(8, &c), 3);
    }
}
