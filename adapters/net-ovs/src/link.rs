//! Network interfaces through netlink (rtnetlink): veth pairs with one end born in a
//! container's network namespace, configured there from a thread of its own that enters
//! that namespace, since a netlink socket talks to the namespace it was opened in.
//!
//! Offloads are the one thing netlink's maintained crates cannot set yet (ethtool's
//! netlink interface is read-only there); `ethtool -K`, the stable interface, does it, on
//! the container's end from that same thread (a child process inherits the namespace of
//! the thread that starts it).

use std::net::Ipv4Addr;
use std::time::Duration;

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, LinkVeth};
use tokio::sync::oneshot;

/// Why an interface operation failed, and at which step.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {reason}")]
pub struct LinkError {
    /// What was being done, for the user: "creating the veth pair psv4f2a9c1d0".
    pub step: String,
    /// What went wrong.
    pub reason: String,
}

fn fail(step: impl Into<String>) -> impl FnOnce(String) -> LinkError {
    let step = step.into();
    move |reason| LinkError { step, reason }
}

/// A netlink handle to this thread's namespace, its connection driven in the background.
fn handle() -> Result<Handle, String> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn find(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, String> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        // ENODEV: no such interface.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether interface `name` exists in this namespace.
pub async fn exists(name: &str) -> Result<bool, LinkError> {
    let step = format!("looking up {name}");
    let handle = handle().map_err(fail(step.clone()))?;
    Ok(find(&handle, name).await.map_err(fail(step))?.is_some())
}

/// Creates the veth pair `host` – `peer` in this namespace.
pub async fn create_veth(host: &str, peer: &str) -> Result<(), LinkError> {
    let step = format!("creating the veth pair {host}/{peer}");
    let handle = handle().map_err(fail(step.clone()))?;
    handle
        .link()
        .add(LinkVeth::new(host, peer).build())
        .execute()
        .await
        .map_err(|e| fail(step)(e.to_string()))
}

/// Creates the veth pair `host` – `peer` with `peer` born in the network namespace of
/// process `pid`, both ends at `mtu` and `host` up. Cheaper than creating the pair here and
/// moving one end: moving an interface between namespaces waits for the kernel to quiesce
/// it, creating it there does not.
pub async fn create_veth_into(host: &str, peer: &str, pid: u32, mtu: u32) -> Result<(), LinkError> {
    use rtnetlink::packet_route::link::{InfoData, InfoVeth};
    let step = format!("creating the veth pair {host}/{peer} into the container's namespace");
    let handle = handle().map_err(fail(step.clone()))?;
    let peer = LinkUnspec::new_with_name(peer)
        .mtu(mtu)
        .setns_by_pid(pid)
        .build();
    let message = LinkVeth::new(host, "")
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(mtu)
        .up()
        .build();
    handle
        .link()
        .add(message)
        .execute()
        .await
        .map_err(|e| fail(step)(e.to_string()))
}

/// Deletes interface `name` (and its veth peer); nothing when it does not exist.
pub async fn delete(name: &str) -> Result<(), LinkError> {
    let step = format!("deleting {name}");
    let handle = handle().map_err(fail(step.clone()))?;
    let Some(link) = find(&handle, name).await.map_err(fail(step.clone()))? else {
        return Ok(());
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(()),
        Err(e) => Err(fail(step)(e.to_string())),
    }
}

/// Sets `name`'s MTU and brings it up.
pub async fn up(name: &str, mtu: u32) -> Result<(), LinkError> {
    let step = format!("bringing {name} up");
    let handle = handle().map_err(fail(step.clone()))?;
    let message = LinkUnspec::new_with_name(name).mtu(mtu).up().build();
    handle
        .link()
        .set(message)
        .execute()
        .await
        .map_err(|e| fail(step)(e.to_string()))
}

/// Turns off the offloads the userspace datapath cannot honour: checksums left to the
/// NIC (dropped after tunnel encapsulation), segmentation and receive coalescing (frames
/// larger than the MTU). `receive`: also generic receive offload (the end OVS reads).
/// Works in the namespace of the calling thread.
pub async fn disable_offloads(name: &str, receive: bool) -> Result<(), LinkError> {
    let step = format!("turning offloads off on {name}");
    let mut args = vec!["-K", name, "tx", "off", "tso", "off", "gso", "off"];
    if receive {
        args.extend(["gro", "off"]);
    }
    let output = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new("ethtool")
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| fail(step.clone())("ethtool did not answer within 5s".into()))?
    .map_err(|e| fail(step.clone())(format!("cannot run ethtool: {e}")))?;
    // ethtool exits non-zero when a feature cannot change ("fixed"): only a missing
    // interface is an error.
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() && stderr.contains("No such device") {
        return Err(fail(step)(stderr.trim().to_owned()));
    }
    Ok(())
}

/// What to set up on the container's side.
#[derive(Clone, Debug)]
pub struct InNamespace {
    /// The interface as it arrives (the veth end moved in).
    pub from: String,
    /// Its name there: `eth1`, `eth2`, ... (the first free when `None`).
    pub to: Option<String>,
    /// Its address and prefix length.
    pub address: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// Its MTU.
    pub mtu: u32,
    /// Whether to turn its transmit offloads off first (for the userspace datapath).
    pub offloads_off: bool,
}

/// Names, addresses and brings up an interface inside the network namespace of process
/// `pid`, with gratuitous ARP on (`arp_notify`: the kernel announces the address when the
/// interface comes up). It comes up only once `ready` fires — when the other end is on the
/// switch, so that the announcement reaches the network; if `ready` is dropped instead,
/// it stays down and this fails. Returns the name it got.
pub async fn configure_in(
    pid: u32,
    spec: InNamespace,
    ready: oneshot::Receiver<()>,
) -> Result<String, LinkError> {
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("net-ovs-netns".into())
        .spawn(move || {
            let _ = tx.send(configure_in_thread(pid, &spec, ready));
        });
    if let Err(e) = spawned {
        return Err(fail("entering the container's network namespace")(
            e.to_string(),
        ));
    }
    rx.await.map_err(|_| {
        fail("entering the container's network namespace")("the worker thread died".into())
    })?
}

/// Runs on a thread of its own, which it moves into the container's namespace for good
/// (the thread ends with it).
fn configure_in_thread(
    pid: u32,
    spec: &InNamespace,
    ready: oneshot::Receiver<()>,
) -> Result<String, LinkError> {
    let enter = "entering the container's network namespace";
    let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| fail(enter)(format!("/proc/{pid}/ns/net: {e}")))?;
    nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| fail(enter)(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(enter)(e.to_string()))?;
    runtime.block_on(async {
        let handle = handle().map_err(fail(enter))?;
        let mut names = Vec::new();
        let mut links = handle.link().get().execute();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(|e| fail(enter)(e.to_string()))?
        {
            for attribute in &link.attributes {
                if let LinkAttribute::IfName(name) = attribute {
                    names.push(name.clone());
                }
            }
        }
        let name = match &spec.to {
            Some(name) => name.clone(),
            None => (1..)
                .map(|n| format!("eth{n}"))
                .find(|n| !names.contains(n))
                .unwrap_or_else(|| "eth9".into()),
        };
        let link = find(&handle, &spec.from)
            .await
            .map_err(fail(format!("finding {} in the container", spec.from)))?
            .ok_or_else(|| {
                fail(format!("finding {} in the container", spec.from))("it is not there".into())
            })?;
        let index = link.header.index;
        if spec.offloads_off {
            // `ethtool`, started from this thread, runs in the container's namespace.
            disable_offloads(&spec.from, false).await?;
        }
        let rename = format!("naming it {name}");
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .name(name.clone())
                    .mtu(spec.mtu)
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| fail(rename)(e.to_string()))?;
        let address = format!("giving {name} the address {}/{}", spec.address, spec.prefix);
        match handle
            .address()
            .add(index, spec.address.into(), spec.prefix)
            .execute()
            .await
        {
            Ok(()) => {}
            // EEXIST: already there (a retry).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => {}
            Err(e) => return Err(fail(address)(e.to_string())),
        }
        // Gratuitous ARP when it comes up; this thread's /proc/sys/net is the namespace's.
        let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{name}/arp_notify"), "1");
        if ready.await.is_err() {
            return Err(fail(format!("bringing {name} up"))(
                "its other end could not be put on the switch".into(),
            ));
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| fail(format!("bringing {name} up"))(e.to_string()))?;
        Ok(name)
    })
}

/// The IPv4 addresses (with prefix lengths) of interface `name` in this namespace.
pub async fn ipv4_addresses(name: &str) -> Result<Vec<(Ipv4Addr, u8)>, LinkError> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let step = format!("reading the addresses of {name}");
    let handle = handle().map_err(fail(step.clone()))?;
    let Some(link) = find(&handle, name).await.map_err(fail(step.clone()))? else {
        return Err(fail(step)("no such interface".into()));
    };
    let mut out = Vec::new();
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(link.header.index)
        .execute();
    while let Some(message) = addresses
        .try_next()
        .await
        .map_err(|e| fail(step.clone())(e.to_string()))?
    {
        for attribute in &message.attributes {
            if let AddressAttribute::Address(std::net::IpAddr::V4(address)) = attribute {
                out.push((*address, message.header.prefix_len));
            }
        }
    }
    Ok(out)
}

/// Adds `address/prefix` to interface `name` (nothing when it is there).
pub async fn add_address(name: &str, address: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
    let step = format!("giving {name} the address {address}/{prefix}");
    let handle = handle().map_err(fail(step.clone()))?;
    let Some(link) = find(&handle, name).await.map_err(fail(step.clone()))? else {
        return Err(fail(step)("no such interface".into()));
    };
    match handle
        .address()
        .add(link.header.index, address.into(), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => Ok(()),
        Err(e) => Err(fail(step)(e.to_string())),
    }
}

/// Removes every IPv4 address of interface `name`.
pub async fn flush_ipv4(name: &str) -> Result<(), LinkError> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let step = format!("removing the addresses of {name}");
    let handle = handle().map_err(fail(step.clone()))?;
    let Some(link) = find(&handle, name).await.map_err(fail(step.clone()))? else {
        return Ok(());
    };
    let mut messages = Vec::new();
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(link.header.index)
        .execute();
    while let Some(message) = addresses
        .try_next()
        .await
        .map_err(|e| fail(step.clone())(e.to_string()))?
    {
        let v4 = message
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Address(std::net::IpAddr::V4(_))));
        if v4 {
            messages.push(message);
        }
    }
    for message in messages {
        handle
            .address()
            .del(message)
            .execute()
            .await
            .map_err(|e| fail(step.clone())(e.to_string()))?;
    }
    Ok(())
}
