//! clsact qdiscs and cls_bpf (direct-action) filters over rtnetlink: the per-endpoint hook
//! alternative to tcx links (see docs/bench/attach.md for why it is measured against tcx).
//!
//! One [`TcSession`] is one blocking `NETLINK_ROUTE` socket, reused for every call: no tokio
//! runtime, no handle, one round trip per operation. The socket acts in the network namespace
//! of the thread that opened it, whichever thread uses it later.
//!
//! Messages are built with netlink-packet-route's `TcMessage` / `TcFilterBpfOption` (it has
//! every cls_bpf attribute we need); the session itself is synchronous because rtnetlink 0.24
//! has no cls_bpf request builder and a runtime per call is what makes today's netlink calls
//! slow.
//!
//! A filter is addressed by (ifindex, direction, prio, handle). cls_bpf filters live with the
//! device: they outlive the process that added them and go away with the veth, without any
//! pin. Ownership is the caller's business: [`TcSession::list`] returns the program id (and
//! tag) of every filter so a caller touches only filters whose program is its own.

use std::{io, num::NonZeroI32, os::fd::BorrowedFd};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkBuffer,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

/// htons(ETH_P_ALL): the filter sees every protocol.
const PROTO_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();

/// Which clsact hook a filter sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Ingress,
    Egress,
}

impl Dir {
    fn parent(self) -> TcHandle {
        TcHandle {
            major: TcHandle::CLSACT.major,
            minor: match self {
                Dir::Ingress => TcHandle::MIN_INGRESS,
                Dir::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }
}

impl std::fmt::Display for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        })
    }
}

/// One cls_bpf filter as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfFilter {
    pub prio: u16,
    pub handle: u32,
    /// Id of the attached program (`bpftool prog show id N`): what ownership checks compare.
    pub prog_id: u32,
    /// TCA_BPF_NAME given when the filter was added.
    pub name: String,
    /// The program's tag (hash of its instructions), when the kernel reports it.
    pub tag: Option<[u8; 8]>,
    pub direct_action: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("{op}: {source} (netlink socket; tc needs CAP_NET_ADMIN in the namespace)")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{op}: ifindex {ifindex} does not exist in this network namespace \
         (deleted meanwhile, or the session was opened in another namespace)"
    )]
    NoDevice { op: String, ifindex: u32 },
    #[error("{op}: ifindex {ifindex} has no clsact qdisc: call ensure_clsact first")]
    NoClsact { op: String, ifindex: u32 },
    #[error(
        "ifindex {ifindex} has a `{kind}` qdisc where clsact belongs: remove it \
         (`tc qdisc del dev IFACE {kind}`) if nothing else needs it, then retry"
    )]
    OtherQdisc { ifindex: u32, kind: String },
    #[error(
        "{op}: prio and handle must be non-zero (the kernel would pick them, so a later replace or delete could not name the filter)"
    )]
    Unaddressed { op: String },
    #[error("{op}: the kernel refused: {source}")]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = TcError> = std::result::Result<T, E>;

/// A reusable rtnetlink socket for clsact / cls_bpf work (see the module docs).
pub struct TcSession {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl TcSession {
    /// Opens the socket in the calling thread's network namespace.
    pub fn new() -> Result<TcSession> {
        let sock_err = |op| move |source| TcError::Socket { op, source };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(sock_err("opening a netlink socket"))?;
        sock.bind_auto()
            .map_err(sock_err("binding the netlink socket"))?;
        sock.connect(&netlink_sys::SocketAddr::new(0, 0))
            .map_err(sock_err("connecting the netlink socket to the kernel"))?;
        Ok(TcSession {
            sock,
            seq: 0,
            buf: Vec::with_capacity(1 << 16),
        })
    }

    /// Adds the clsact qdisc to `ifindex` unless it has one. True if this call added it.
    /// Another qdisc in its place (`ingress`) is an error, never replaced.
    pub fn ensure_clsact(&mut self, ifindex: u32) -> Result<bool> {
        let op = format!("adding the clsact qdisc to ifindex {ifindex}");
        let msg = TcMessage::from_parts(
            TcHeader {
                index: ifindex as i32,
                handle: TcHandle {
                    major: TcHandle::CLSACT.major,
                    minor: 0,
                },
                parent: TcHandle::CLSACT,
                ..Default::default()
            },
            vec![TcAttribute::Kind("clsact".into())],
        );
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        match self.ack(RouteNetlinkMessage::NewQueueDiscipline(msg), flags) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                match self.ingress_qdisc_kind(ifindex)? {
                    Some(k) if k == "clsact" => Ok(false),
                    Some(kind) => Err(TcError::OtherQdisc { ifindex, kind }),
                    None => Err(TcError::Kernel { op, source: e }),
                }
            }
            Err(e) => Err(kernel(op, ifindex, e)),
        }
    }

    /// Kind of the qdisc in the ingress/clsact slot of `ifindex`, if any.
    fn ingress_qdisc_kind(&mut self, ifindex: u32) -> Result<Option<String>> {
        let op = format!("listing the qdiscs of ifindex {ifindex}");
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.index = ifindex as i32;
        let mut kind = None;
        self.dump(RouteNetlinkMessage::GetQueueDiscipline(msg), |m| {
            if let RouteNetlinkMessage::NewQueueDiscipline(q) = m
                && q.header.index == ifindex as i32
                && q.header.parent == TcHandle::CLSACT
            {
                for a in &q.attributes {
                    if let TcAttribute::Kind(k) = a {
                        kind = Some(k.clone());
                    }
                }
            }
        })
        .map_err(|e| kernel(op.clone(), ifindex, e))?;
        Ok(kind)
    }

    /// Adds the direct-action cls_bpf filter (prio, handle) running `prog` on `dir` of
    /// `ifindex`, or swaps the program of the filter already there (NLM_F_REPLACE: one atomic
    /// pointer swap, no moment without a filter). Whoever owned the filter at (prio, handle)
    /// loses it: check [`TcSession::list`] first.
    pub fn add_or_replace_bpf(
        &mut self,
        ifindex: u32,
        dir: Dir,
        prio: u16,
        handle: u32,
        prog: BorrowedFd<'_>,
        name: &str,
    ) -> Result<()> {
        use std::os::fd::AsRawFd;
        let op = format!(
            "attaching {name} to {dir} of ifindex {ifindex} (prio {prio} handle {handle:#x})"
        );
        if prio == 0 || handle == 0 {
            return Err(TcError::Unaddressed { op });
        }
        let msg = TcMessage::from_parts(
            filter_header(ifindex, dir, prio, handle),
            vec![
                TcAttribute::Kind("bpf".into()),
                TcAttribute::Options(vec![
                    TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
                    TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
                    TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
                ]),
            ],
        );
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        match self.ack(RouteNetlinkMessage::NewTrafficFilter(msg), flags) {
            Ok(()) => Ok(()),
            // EINVAL is also what a missing parent qdisc gets: say which it was.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                match self.ingress_qdisc_kind(ifindex)? {
                    Some(k) if k == "clsact" => Err(TcError::Kernel { op, source: e }),
                    Some(kind) => Err(TcError::OtherQdisc { ifindex, kind }),
                    None => Err(TcError::NoClsact { op, ifindex }),
                }
            }
            Err(e) => Err(kernel(op, ifindex, e)),
        }
    }

    /// Deletes filter (prio, handle) of `dir` on `ifindex`. False if there was none: no such
    /// filter, no clsact qdisc, or no such device (deleting a veth deletes its filters).
    pub fn delete(&mut self, ifindex: u32, dir: Dir, prio: u16, handle: u32) -> Result<bool> {
        let op =
            format!("deleting filter prio {prio} handle {handle:#x} of {dir} on ifindex {ifindex}");
        if prio == 0 || handle == 0 {
            return Err(TcError::Unaddressed { op });
        }
        let mut header = filter_header(ifindex, dir, prio, handle);
        header.handle = handle.into();
        let msg = TcMessage::from_parts(header, vec![TcAttribute::Kind("bpf".into())]);
        match self.ack(
            RouteNetlinkMessage::DelTrafficFilter(msg),
            NLM_F_REQUEST | NLM_F_ACK,
        ) {
            Ok(()) => Ok(true),
            // ENOENT: no such filter or prio; EINVAL: no clsact (no block to look in);
            // ENODEV: the device is gone, and its filters with it.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::EINVAL) | Some(libc::ENODEV)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(kernel(op, ifindex, e)),
        }
    }

    /// Every cls_bpf filter on `dir` of `ifindex`, in the kernel's order (by prio), ours or
    /// not (classic BPF filters have `prog_id` 0). Empty if the device has no clsact qdisc or
    /// does not exist (the kernel's dump does not tell these apart).
    pub fn list(&mut self, ifindex: u32, dir: Dir) -> Result<Vec<BpfFilter>> {
        let op = format!("listing the {dir} filters of ifindex {ifindex}");
        let msg = TcMessage::from_parts(
            TcHeader {
                index: ifindex as i32,
                parent: dir.parent(),
                ..Default::default()
            },
            vec![],
        );
        let mut out = Vec::new();
        let r = self.dump(RouteNetlinkMessage::GetTrafficFilter(msg), |m| {
            if let RouteNetlinkMessage::NewTrafficFilter(f) = m
                && f.header.index == ifindex as i32
                && let Some(bf) = bpf_filter(&f)
            {
                out.push(bf);
            }
        });
        match r {
            Ok(()) => Ok(out),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(vec![]),
            Err(e) => Err(kernel(op, ifindex, e)),
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&mut self, inner: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        let seq = self.next_seq();
        let mut req = NetlinkMessage::from(inner);
        req.header.flags = flags;
        req.header.sequence_number = seq;
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.sock.send(&out, 0)?;
        Ok(seq)
    }

    /// Sends a request and waits for its ACK (or error).
    fn ack(&mut self, inner: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(inner, flags)?;
        let mut result = None;
        self.receive(seq, |_| {}, &mut result)?;
        result.unwrap_or(Ok(()))
    }

    /// Sends a dump request and feeds every answer to `f` until NLMSG_DONE.
    fn dump(
        &mut self,
        inner: RouteNetlinkMessage,
        f: impl FnMut(RouteNetlinkMessage),
    ) -> io::Result<()> {
        let seq = self.send(inner, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut result = None;
        self.receive(seq, f, &mut result)?;
        result.unwrap_or(Ok(()))
    }

    /// Reads datagrams until the answer to `seq` is complete (ACK, error or DONE).
    fn receive(
        &mut self,
        seq: u32,
        mut f: impl FnMut(RouteNetlinkMessage),
        result: &mut Option<io::Result<()>>,
    ) -> io::Result<()> {
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let mut data = &self.buf[..];
            while !data.is_empty() {
                let len = match NetlinkBuffer::new_checked(data) {
                    Ok(b) => b.length() as usize,
                    Err(_) => break,
                };
                if len == 0 || len > data.len() {
                    break;
                }
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len]);
                data = &data[((len + 3) & !3).min(data.len())..];
                let Ok(msg) = msg else { continue };
                if msg.header.sequence_number != seq {
                    continue; // a late answer to an earlier request
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        *result = Some(match e.code.map(NonZeroI32::get) {
                            None => Ok(()),
                            Some(c) => Err(io::Error::from_raw_os_error(-c)),
                        });
                        return Ok(());
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::InnerMessage(m) => f(m),
                    _ => {}
                }
            }
        }
    }
}

fn filter_header(ifindex: u32, dir: Dir, prio: u16, handle: u32) -> TcHeader {
    TcHeader {
        index: ifindex as i32,
        handle: handle.into(),
        parent: dir.parent(),
        info: ((prio as u32) << 16) | PROTO_ALL as u32,
        ..Default::default()
    }
}

fn bpf_filter(f: &TcMessage) -> Option<BpfFilter> {
    let handle: u32 = f.header.handle.into();
    if handle == 0 {
        return None; // the per-prio chain entry the dump reports before the filters
    }
    let mut is_bpf = false;
    let mut bf = BpfFilter {
        prio: (f.header.info >> 16) as u16,
        handle,
        prog_id: 0,
        name: String::new(),
        tag: None,
        direct_action: false,
    };
    for a in &f.attributes {
        match a {
            TcAttribute::Kind(k) => is_bpf = k == "bpf",
            TcAttribute::Options(opts) => {
                for o in opts {
                    match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => bf.prog_id = *id,
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => bf.name = n.clone(),
                        TcOption::Bpf(TcFilterBpfOption::ProgTag(t)) => bf.tag = Some(*t),
                        TcOption::Bpf(TcFilterBpfOption::Flags(fl)) => {
                            bf.direct_action = fl.contains(TcBpfFlags::DirectAction)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    is_bpf.then_some(bf)
}

/// Maps the errnos with a known meaning to the errors that say what to do.
fn kernel(op: String, ifindex: u32, e: io::Error) -> TcError {
    match e.raw_os_error() {
        Some(libc::ENODEV) => TcError::NoDevice { op, ifindex },
        _ => TcError::Kernel { op, source: e },
    }
}
