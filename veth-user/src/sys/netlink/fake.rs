//! An in-memory kernel for the unit tests of [`super::apply`]: interfaces with their
//! addresses, permanent neighbours and routes, answering like rtnetlink does (EEXIST for an
//! address or route already there, a neighbour replaced only when asked), and failing on
//! request at the n-th change.

use std::net::IpAddr;

use super::{
    NetlinkError,
    apply::{Found, Iface, LinkKernel, Neighbour, Present, Route, Step, StepError},
};
use crate::types::Cidr;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeLink {
    pub ifindex: u32,
    pub name: String,
    pub up: bool,
    pub addrs: Vec<Cidr>,
    pub neighbours: Vec<Neighbour>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Default)]
pub struct FakeKernel {
    pub links: Vec<FakeLink>,
    /// Fail the change with this number (0: the first), with EPERM.
    pub fail_at: Option<usize>,
    /// Changes made (and attempted) so far.
    pub changes: usize,
    /// Netlink requests that only look.
    pub looks: usize,
}

impl FakeKernel {
    pub fn with_link(ifindex: u32, name: &str, up: bool) -> FakeKernel {
        FakeKernel {
            links: vec![FakeLink {
                ifindex,
                name: name.into(),
                up,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    pub fn link(&self, ifindex: u32) -> &FakeLink {
        self.links.iter().find(|l| l.ifindex == ifindex).unwrap()
    }

    pub fn link_mut(&mut self, ifindex: u32) -> &mut FakeLink {
        self.links
            .iter_mut()
            .find(|l| l.ifindex == ifindex)
            .unwrap()
    }

    /// Deleting the interface takes everything on it along (a veth delete: the undo of
    /// `add`'s kernel part).
    pub fn delete(&mut self, ifindex: u32) {
        self.links.retain(|l| l.ifindex != ifindex);
    }
}

fn fail(errno: i32) -> StepError {
    StepError {
        errno: Some(errno),
        msg: std::io::Error::from_raw_os_error(errno).to_string(),
    }
}

impl LinkKernel for FakeKernel {
    fn find(&mut self, iface: &Iface<'_>) -> Result<Option<Found>, NetlinkError> {
        self.looks += 1;
        Ok(self
            .links
            .iter()
            .find(|l| match iface {
                Iface::Index(i) => l.ifindex == *i,
                Iface::Name(n, _) => l.name == *n,
            })
            .map(|l| Found {
                ifindex: l.ifindex,
                name: l.name.clone(),
                up: l.up,
            }))
    }

    fn present(&mut self, ifindex: u32, addrs: bool) -> Result<Present, NetlinkError> {
        self.looks += 1;
        let l = self.link(ifindex);
        Ok(Present {
            addrs: if addrs {
                l.addrs.iter().map(|a| a.addr).collect()
            } else {
                Vec::new()
            },
            neighbours: l.neighbours.clone(),
            routes: l.routes.iter().map(|r| (r.dst, r.prefix)).collect(),
        })
    }

    fn make(&mut self, ifindex: u32, step: &Step, replace: bool) -> Result<(), StepError> {
        let n = self.changes;
        self.changes += 1;
        if self.fail_at == Some(n) {
            return Err(fail(libc::EPERM));
        }
        let Some(l) = self.links.iter_mut().find(|l| l.ifindex == ifindex) else {
            return Err(fail(libc::ENODEV));
        };
        match *step {
            Step::Addr(a) => {
                if l.addrs.iter().any(|b| b.addr == a.addr) {
                    return Err(fail(libc::EEXIST));
                }
                l.addrs.push(a);
            }
            Step::Up => l.up = true,
            Step::Neighbour(nb) => {
                let same_ip = |x: &Neighbour| x.addr == nb.addr;
                if l.neighbours.iter().any(same_ip) {
                    if !replace {
                        return Err(fail(libc::EEXIST));
                    }
                    l.neighbours.retain(|x| !same_ip(x));
                }
                l.neighbours.push(nb);
            }
            Step::Route(r) => {
                if !l.up {
                    return Err(fail(libc::ENETDOWN));
                }
                if l.routes
                    .iter()
                    .any(|x| (x.dst, x.prefix) == (r.dst, r.prefix))
                {
                    return Err(fail(libc::EEXIST));
                }
                if let Some(IpAddr::V4(gw)) = r.via
                    && !l.routes.iter().any(|x| x.dst == IpAddr::V4(gw))
                {
                    // The kernel wants a v4 gateway reachable first (the on-link route).
                    return Err(fail(libc::ENETUNREACH));
                }
                l.routes.push(r);
            }
        }
        Ok(())
    }
}
