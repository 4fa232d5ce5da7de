/* vethtrace: the event shared by every probe program and by Python.
 *
 * Python does not restate this struct: it takes the layout as compiled (the
 * leaf type of the vt_layout map below, saved beside cached programs) and
 * reads events with struct readers built from it. The point ids (VT_P_*) and
 * frame flags (VT_PKT_*) are parsed from this file by
 * vethtrace/collect/events.py (keep the `#define VT_<NAME> <n>` form).
 *
 * Kernel structures are opaque here on purpose. Every offset (VT_SKB_*,
 * VT_DEV_*, ...) is a -D constant computed from the running kernel's BTF, so
 * the headers bcc compiles against (possibly another kernel's) never decide a
 * layout. Tracepoint arguments come from raw tracepoints (pointers, not the
 * classic record), their positions (VT_ARG_*) again from BTF; VT_HAVE_<TP>
 * says which tracepoints this kernel has.
 *
 * Nothing about one run is compiled in: the packet filter, the -n namespaces
 * and the VXLAN ports are map data (vt_cfg, vt_scope below), written by
 * Python before anything is reported, so one compiled set (cached by
 * collect/progcache.py, prepared at set-up) serves every filter and scope.
 *
 * Longer than the project's ~400-line guide: the shared helpers build on one
 * another in order (frame decoding, the per-skb verdict memory, then the skb
 * event that uses both), and collect/source.py inlines this one file ahead
 * of the programs (bcc rewrites map calls only in its main text); a split
 * would need source.py to inline the parts in that order.
 */
#ifndef VETHTRACE_H
#define VETHTRACE_H

/* probe points (the event's `point`); Python names each after its define in
 * lower case: VT_P_NET_DEV_XMIT is "net_dev_xmit". Every id is emitted by a
 * probe. */
#define VT_P_NET_DEV_QUEUE 1
#define VT_P_NET_DEV_START_XMIT 2
#define VT_P_NET_DEV_XMIT 3
#define VT_P_NETIF_RX 4
#define VT_P_NETIF_RECEIVE_SKB 5
#define VT_P_KFREE_SKB 6
#define VT_P_CONSUME_SKB 7
#define VT_P_NEIGH_CREATE 8
#define VT_P_NEIGH_UPDATE 9
#define VT_P_NEIGH_UPDATE_DONE 10
#define VT_P_NEIGH_TIMER_HANDLER 11
#define VT_P_NEIGH_EVENT_SEND_DONE 12
#define VT_P_BR_FDB_UPDATE 13
#define VT_P_VETH_XMIT 14
#define VT_P_BR_HANDLE_FRAME 15
#define VT_P_BR_FORWARD 16
#define VT_P_BR_PASS_FRAME_UP 17

/* what a probe could decode of the frame (struct vt_pkt.flags) */
#define VT_PKT_ETH 1  /* eth_src/eth_dst valid (from the MAC header) */
#define VT_PKT_L3 2   /* ethertype valid; saddr/daddr for IPv4 and ARP */
#define VT_PKT_L4 4   /* ports or ICMP fields valid */
#define VT_PKT_VXLAN 8 /* IPv4/UDP VXLAN: the event's vni and inner are valid */

/* Decoded frame. For ARP, saddr/daddr hold the sender/target protocol
 * addresses, so `host A` matches ARP the way tcpdump does. Addresses stay in
 * network byte order; ports, ICMP id/seq and the ethertype are host order. */
struct vt_pkt {
    u8 eth_src[6];
    u8 eth_dst[6];
    u16 ethertype;
    u16 arp_op;
    u8 arp_sha[6];
    u8 arp_tha[6];
    u32 saddr;
    u32 daddr;
    u16 sport;
    u16 dport;
    u16 icmp_id;
    u16 icmp_seq;
    u16 ip_id;        /* IPv4 identification (host order) */
    u8 ip_proto;
    u8 icmp_type;
    u8 icmp_code;
    u8 flags;
};

struct vt_event {
    u64 ts;           /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u64 skb;          /* skb address (0 for neighbour events) */
    u64 head;         /* skb->head: shared by clones */
    u64 location;     /* kfree_skb/consume_skb caller address */
    u32 netns;        /* inode of the device's (or socket's) netns */
    u32 ifindex;
    u32 len;
    u32 reason;       /* enum skb_drop_reason */
    s32 rc;           /* net_dev_xmit rc; neigh err */
    u32 cpu;
    u16 point;        /* VT_P_* */
    u8 cloned;
    u8 family;        /* neighbour: AF_INET / AF_INET6 */
    u8 old_state;     /* neighbour NUD_* before (0xff = unknown) */
    u8 new_state;     /* neighbour NUD_* after (0xff = unknown) */
    u8 lladdr[6];     /* neighbour lladdr / fdb MAC */
    u8 key[16];       /* neighbour primary key (IPv4: first 4 bytes) */
    u32 ifindex2;     /* br_fdb_update: port; br_forward: egress port */
    u16 vid;
    u16 pad;
    char ifname[16];
    char ifname2[16];
    struct vt_pkt pkt;
    /* VXLAN (pkt.flags & VT_PKT_VXLAN): the encapsulated frame, decoded as
     * pkt is, and the VNI. Python reads pkt, inner and vni as one block. */
    struct vt_pkt inner;
    u32 vni;
    u32 pad2;
};

/* Delivery: one ring buffer for all CPUs keeps events nearly in order and
 * costs half a perf buffer's CPU; perf buffer where the kernel lacks it. */
/* Python takes the event's ctypes layout from this map's leaf type (bcc's
 * `.event()` cannot build nested structs); the map is never used here. */
BPF_ARRAY(vt_layout, struct vt_event, 1);

#ifdef VT_RINGBUF
BPF_RINGBUF_OUTPUT(vt_events, VT_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(vt_lost, u64, 1);
#else
BPF_PERF_OUTPUT(vt_events);
BPF_PERCPU_ARRAY(vt_scratch, struct vt_event, 1);
#endif

/* net_dev_start_xmit and net_dev_xmit bracket one driver call (xmit_one()):
 * same CPU, BH off, nested inner-first when one transmit leads to another
 * (br0 -> veth0, same skb). start_xmit pushes its verdict on this per-CPU
 * stack; net_dev_xmit, where the skb must not be read, pops it and reports
 * exactly the transmits reported at start_xmit. A per-skb hash map did this
 * before at ~170 ns per net_dev_xmit, and lost the outer xmit of a nested pair
 * (the inner one deleted the shared key). */
#define VT_TXSTACK 8 /* power of 2, >= the kernel's XMIT_RECURSION_LIMIT (8) */
struct vt_txstack {
    u64 skb[VT_TXSTACK];
    u8 ok[VT_TXSTACK];
    u32 n;            /* pushes - pops; the newest VT_TXSTACK entries are kept */
};
BPF_PERCPU_ARRAY(vt_tx, struct vt_txstack, 1);

/* ---- What Python sets per run --------------------------------------------
 * One entry, written by collect/runcfg.py: the packet filter as a jump
 * program (collect/filter.py compiles it, and is the home of VT_FLT_* and
 * VT_FLD_*, passed as -D flags), whether -n limits the namespaces (their
 * inodes are the keys of vt_scope), and the VXLAN ports. bcc attaches
 * programs as it loads them, before Python can write the entry: until
 * `ready` is set every probe ignores everything. */
struct vt_insn {
    u8 field;         /* VT_FLD_*: which struct vt_pkt field */
    u8 pad;
    u16 jt;           /* next instruction when (field & mask) == want */
    u16 jf;           /* ... when not; VT_FLT_ACCEPT / VT_FLT_REJECT end */
    u16 pad2;
    u32 mask;
    u32 want;
};
#define VT_VXLAN_MAX 8
struct vt_cfg {
    u8 ready;
    u8 active;        /* a packet filter is set: run it, decide once per skb */
    u8 empty;         /* the filter accepts a packet with nothing decoded */
    u8 scoped;        /* -n: only namespaces whose inode is in vt_scope */
    u8 nvxlan;        /* ports in vxlan[] (the rest repeat the first) */
    u8 pad[3];
    u16 vxlan[VT_VXLAN_MAX]; /* VXLAN UDP ports, host order */
    struct vt_insn insn[VT_FLT_MAX];
};
BPF_ARRAY(vt_cfg, struct vt_cfg, 1);
#define VT_SCOPE_MAX 4096
BPF_HASH(vt_scope, u32, u8, VT_SCOPE_MAX);

static __always_inline struct vt_cfg *vt_config(void)
{
    int zero = 0;
    struct vt_cfg *c = vt_cfg.lookup(&zero);
    return c && c->ready ? c : 0;
}

#define VT_READ(dst, src) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(src))

static __always_inline u64 vt_ptr(void *base, int off)
{
    u64 v = 0;
    VT_READ(v, (char *)base + off);
    return v;
}

static __always_inline u32 vt_dev_netns(void *dev)
{
    u64 net = vt_ptr(dev, VT_DEV_NET);
    u32 inum = 0;
    if (net)
        VT_READ(inum, (char *)net + VT_NET_INUM);
    return inum;
}

/* netns of a device, or of the skb's socket when the skb has no device */
static __always_inline u32 vt_skb_netns(void *skb, void *dev)
{
    if (dev)
        return vt_dev_netns(dev);
#ifdef VT_SK_NET
    u64 sk = vt_ptr(skb, VT_SKB_SK);
    if (!sk)
        return 0;
    u64 net = vt_ptr((void *)sk, VT_SK_NET);
    u32 inum = 0;
    if (net)
        VT_READ(inum, (char *)net + VT_NET_INUM);
    return inum;
#else
    return 0;
#endif
}

/* Is this namespace one the user asked for (-n)? A hash lookup; the per-CPU
 * memo below keeps most out-of-scope skbs from getting here. */
static __always_inline int vt_netns_ok(struct vt_cfg *c, u32 inum)
{
    if (!c->scoped)
        return 1;
    return vt_scope.lookup(&inum) != 0;
}

/* -n: a per-CPU memo of `struct net` addresses found outside the scope, so
 * the next skb there is rejected after reading dev->nd_net, without reading
 * the inode. Only "outside" is remembered: an address names one live
 * namespace, and the namespaces in scope exist for the whole trace, so none
 * of them can take an address remembered for another (after a namespace is
 * freed its address may go to a new one, which is out of scope unless it
 * reuses the inode of a scoped namespace that is gone: nothing the user
 * named is hidden). Namespaces added to the scope while tracing would make
 * the memo wrong: whoever adds one clears vt_nsout too. 4 slots: a bridged
 * path crosses 3 namespaces. */
#define VT_NSMEMO 4
struct vt_nsmemo {
    u64 net[VT_NSMEMO];
};
BPF_PERCPU_ARRAY(vt_nsout, struct vt_nsmemo, 1);

static __always_inline int vt_nsmemo_slot(u64 net)
{
    return ((net >> 8) ^ (net >> 12) ^ (net >> 16)) & (VT_NSMEMO - 1);
}

/* netns inode of dev when in scope, else 0 (also for no device) */
static __always_inline u32 vt_dev_netns_scoped(struct vt_cfg *c, void *dev)
{
    if (!dev)
        return 0;
    u64 net = vt_ptr(dev, VT_DEV_NET);
    if (!net)
        return 0;
    int zero = 0;
    struct vt_nsmemo *m = vt_nsout.lookup(&zero);
    int slot = vt_nsmemo_slot(net);
    if (m && m->net[slot] == net)
        return 0;
    u32 inum = 0;
    VT_READ(inum, (char *)net + VT_NET_INUM);
    if (vt_netns_ok(c, inum))
        return inum;
    if (m)
        m->net[slot] = net;
    return 0;
}

static __always_inline u16 vt_ntohs(u16 v) { return (v >> 8) | (v << 8); }

/* skb->head, mac_header, network_header and protocol sit within a few bytes
 * of each other: one read of the block [VT_SKB_BLOCK_OFF, +VT_SKB_BLOCK_LEN)
 * (both from BTF) instead of four. */
#define VT_AT(blk, off, type) (*(type *)((blk) + (off) - VT_SKB_BLOCK_OFF))

/* IPv4/ARP (+ first 8 bytes of L4) from `b`, which holds the L3 header. */
static __always_inline void vt_decode_l3(u8 *b, struct vt_pkt *p, char *l3)
{
    if (p->ethertype == 0x0806) {
        p->arp_op = ((u16)b[6] << 8) | b[7];
        __builtin_memcpy(p->arp_sha, b + 8, 6);
        __builtin_memcpy(&p->saddr, b + 14, 4);
        __builtin_memcpy(p->arp_tha, b + 18, 6);
        __builtin_memcpy(&p->daddr, b + 24, 4);
    } else if (p->ethertype == 0x0800) {
        u32 ihl = (b[0] & 0x0f) * 4;
        p->ip_proto = b[9];
        p->ip_id = ((u16)b[4] << 8) | b[5];
        __builtin_memcpy(&p->saddr, b + 12, 4);
        __builtin_memcpy(&p->daddr, b + 16, 4);
        u16 frag = ((u16)(b[6] & 0x1f) << 8) | b[7];
        if (frag || ihl < 20)
            return;
        u8 l4[8] = {};
        if (ihl == 20)
            __builtin_memcpy(l4, b + 20, 8);
        else
            VT_READ(l4, l3 + ihl);
        if (p->ip_proto == 1) {
            p->icmp_type = l4[0];
            p->icmp_code = l4[1];
            p->icmp_id = ((u16)l4[4] << 8) | l4[5];
            p->icmp_seq = ((u16)l4[6] << 8) | l4[7];
            p->flags |= VT_PKT_L4;
        } else if (p->ip_proto == 6 || p->ip_proto == 17) {
            p->sport = ((u16)l4[0] << 8) | l4[1];
            p->dport = ((u16)l4[2] << 8) | l4[3];
            p->flags |= VT_PKT_L4;
        }
    }
}

/* What a decode reads from kernel memory, with two reads: the skb block,
 * then 46 bytes of frame from the MAC header when set (TX after
 * dev_queue_xmit, RX after eth_type_trans), else from the network header
 * (skbs dropped before getting one, e.g. from the ARP queue). Decoding
 * (vt_fields) is separate: the filter's program (vt_decide) decodes the
 * fields it may test, the event everything, both from the frame read once. */
#define VT_SRC_MAC 1
#define VT_SRC_NET 2

/* VXLAN: UDP to one of the ports in vt_cfg.vxlan (the IANA port 4789 and
 * those of the VXLAN devices in scope, from collect/runcfg.py) carrying an 8-byte header with the I flag, then the inner Ethernet
 * frame. The second read takes the VXLAN header, the inner Ethernet header
 * and 28 bytes of inner L3 (ARP, or IPv4 + 8 bytes of L4), only for such
 * datagrams: other traffic pays one comparison. Outer IPv4 with options
 * (VXLAN senders never set any) or a VLAN tag is not followed. */
#define VT_INNER_LEN 50 /* 8 VXLAN + 14 Ethernet + 28 L3 */
struct vt_frame {
    u64 head;
    u16 protocol;     /* skb->protocol, network order; 0: not a network packet */
    u16 off;          /* f[0] is at head + off */
    u8 src;           /* VT_SRC_MAC, VT_SRC_NET, or 0: no frame read */
    u8 encap;         /* 1: f is IPv4/UDP to a VXLAN port, g holds what it carries */
    u8 f[46];
    u8 g[VT_INNER_LEN];
};

/* Is port one of vt_cfg.vxlan (unused slots repeat a used port)? Without a
 * branch per slot: every UDP datagram passes here, and each branch would be
 * another path for the verifier through the rest of the program. */
static __always_inline int vt_vxlan_port(struct vt_cfg *c, u16 port)
{
    u64 hit = 0;
#pragma unroll
    for (int k = 0; k < VT_VXLAN_MAX; k++) {
        u64 d = c->vxlan[k] ^ port;
        u64 nd = 0 - d;
        asm volatile("" : "+r"(nd));
        hit |= ((d | nd) >> 63) ^ 1; /* 1 when equal */
    }
    return hit != 0;
}

static __always_inline void vt_read_frame(struct vt_cfg *c, void *skb, struct vt_frame *fr)
{
    u8 blk[VT_SKB_BLOCK_LEN] __attribute__((aligned(8)));
    fr->src = 0;
    fr->off = 0;
    fr->encap = 0;
    if (bpf_probe_read_kernel(blk, sizeof(blk), (char *)skb + VT_SKB_BLOCK_OFF) < 0) {
        fr->head = 0;
        fr->protocol = 0;
        return;
    }
    fr->head = VT_AT(blk, VT_SKB_HEAD, u64);
    fr->protocol = VT_AT(blk, VT_SKB_PROTOCOL, u16);
    u16 mac = VT_AT(blk, VT_SKB_MAC_HEADER, u16);
    u16 net = VT_AT(blk, VT_SKB_NETWORK_HEADER, u16);
    if (!fr->head || !fr->protocol)
        return;
    if (mac != 0xffff) {
        fr->src = VT_SRC_MAC;
        fr->off = mac;
    } else if (net != 0xffff) {
        fr->src = VT_SRC_NET;
        fr->off = net;
    } else {
        return;
    }
    /* a failed read leaves f zeroed (the helper clears it) */
    bpf_probe_read_kernel(fr->f, sizeof(fr->f), (char *)fr->head + fr->off);
    /* VXLAN? IPv4 without options (0x45), not a fragment, UDP, VXLAN port */
    int l3 = fr->src == VT_SRC_MAC ? 14 : 0;
    u8 *ip = fr->f + l3;
    if (fr->src == VT_SRC_MAC && (fr->f[12] != 0x08 || fr->f[13] != 0x00))
        return;
    if (fr->src == VT_SRC_NET && fr->protocol != 0x0008) /* htons(ETH_P_IP) */
        return;
    if (ip[0] != 0x45 || ip[9] != 17 || (ip[6] & 0x3f) || ip[7])
        return;
    u16 dport = ((u16)ip[22] << 8) | ip[23];
    if (!vt_vxlan_port(c, dport))
        return;
    if (bpf_probe_read_kernel(fr->g, sizeof(fr->g), (char *)fr->head + fr->off + l3 + 28) < 0)
        return;
    if (fr->g[0] & 0x08) /* the I flag: the VNI is valid */
        fr->encap = 1;
}

/* The frame a VXLAN datagram carries (vt_read_frame found one) into `p`
 * (zeroed), and its VNI. */
static __always_inline u32 vt_inner_fields(struct vt_frame *fr, struct vt_pkt *p)
{
    u8 *g = fr->g;
    char *at = (char *)fr->head + fr->off + (fr->src == VT_SRC_MAC ? 14 : 0) + 28 + 8;
    __builtin_memcpy(p->eth_dst, g + 8, 6);
    __builtin_memcpy(p->eth_src, g + 14, 6);
    p->ethertype = ((u16)g[20] << 8) | g[21];
    p->flags = VT_PKT_ETH | VT_PKT_L3;
    vt_decode_l3(g + 22, p, at + 14);
    return ((u32)g[4] << 16) | ((u32)g[5] << 8) | g[6];
}

/* Ethernet/ARP/IPv4/L4 fields from a frame read by vt_read_frame. `p` must be
 * zeroed. Only an IPv4 header with options costs one more read (of L4). */
static __always_inline void vt_fields(struct vt_frame *fr, struct vt_pkt *p)
{
    u8 *f = fr->f;
    char *at = (char *)fr->head + fr->off;
    if (fr->src == VT_SRC_MAC) {
        __builtin_memcpy(p->eth_dst, f, 6);
        __builtin_memcpy(p->eth_src, f + 6, 6);
        p->ethertype = ((u16)f[12] << 8) | f[13];
        p->flags = VT_PKT_ETH | VT_PKT_L3;
        if (p->ethertype == 0x8100 || p->ethertype == 0x88a8) {
            p->ethertype = ((u16)f[16] << 8) | f[17];
            vt_decode_l3(f + 18, p, at + 18);
        } else {
            vt_decode_l3(f + 14, p, at + 14);
        }
    } else if (fr->src == VT_SRC_NET) {
        p->ethertype = vt_ntohs(fr->protocol);
        p->flags = VT_PKT_L3;
        vt_decode_l3(f, p, at);
    }
}

/* The user's pcap-filter as a jump program (collect/filter.py): each step
 * tests (field & mask) == want and goes to jt or jf. Jumps only go forward,
 * so at most VT_FLT_MAX steps run per level (a bounded loop the verifier
 * accepts on 5.10); a packet that fails the first test (the ethertype,
 * mostly) costs one step. The fields are copied into a per-CPU map value,
 * where the step picks one by index: older kernels (5.10) refuse
 * variable-offset stack reads, and a switch per step made verification
 * much slower. v[1] holds the frame a VXLAN datagram carries (matched
 * when its outer headers, v[0], are not). */
#define VT_NFLD 8 /* power of 2, > the VT_FLD_* ids */
/* Per-CPU work space of one skb event: the frame as read, and the fields
 * the filter tests. In a map value rather than on the stack: the verifier
 * tracks stack contents, and every decoding path (ARP, IPv4, VXLAN, ...)
 * would reach the filter loop with a different stack and have the whole
 * loop verified again (10 times per program, ~60 ms per load); it does not
 * track map contents. */
struct vt_work {
    struct vt_frame fr;
    u32 v[2][VT_NFLD];
    /* the event's arguments, for vt_decide (and across the inline loop) */
    u64 skb;
    u64 dev;
    u64 location;
    u32 netns;
    u32 reason;
    u16 point;
    u16 pad[3];
};
BPF_PERCPU_ARRAY(vt_work, struct vt_work, 1);

static __always_inline void vt_fv_put(u32 *v, struct vt_pkt *p)
{
    v[VT_FLD_ETHERTYPE] = p->ethertype;
    v[VT_FLD_IP_PROTO] = p->ip_proto;
    v[VT_FLD_SADDR] = p->saddr;
    v[VT_FLD_DADDR] = p->daddr;
    v[VT_FLD_SPORT] = p->sport;
    v[VT_FLD_DPORT] = p->dport;
    v[VT_FLD_FLAGS] = p->flags;
}

/* 1 when the program accepts the fields in v */
static __always_inline int vt_run(struct vt_cfg *c, u32 *v)
{
    u32 pc = 0;
#pragma clang loop unroll(disable)
    for (int i = 0; i < VT_FLT_MAX; i++) {
        if (pc >= VT_FLT_MAX)
            break;
        /* the mask on the very register that indexes: the compiler would
         * otherwise index with an unbounded copy of pc */
        u32 k = pc;
        asm volatile("" : "+r"(k));
        struct vt_insn *in = &c->insn[k & (VT_FLT_MAX - 1)];
        u32 x = v[in->field & (VT_NFLD - 1)];
        /* pc = test ? jt : jf without a branch: one verifier path per step */
        u64 d = (u64)((x & in->mask) ^ in->want);
        u64 nd = 0 - d;
        asm volatile("" : "+r"(nd)); /* else the compiler makes it a branch again */
        u64 ne = (d | nd) >> 63; /* 1 when the test fails */
        u32 jt = in->jt, jf = in->jf;
        pc = jt ^ ((jt ^ jf) & (u32)(0 - ne));
    }
    return pc == VT_FLT_ACCEPT;
}

/* The frame in w through the filter: its headers, or for a VXLAN datagram
 * the outer or the inner ones. Decoding every field the program may test
 * has many paths (ARP, IPv4, options, VLAN, ...): the barrier after each
 * level lets them all reach the loop in one verifier state. */
static __always_inline int vt_filter(struct vt_cfg *c, struct vt_work *w)
{
    struct vt_pkt q = {};
    vt_fields(&w->fr, &q);
    vt_fv_put(w->v[0], &q);
    asm volatile("" ::: "memory");
    if (vt_run(c, w->v[0]))
        return 1;
    if (!w->fr.encap)
        return 0;
    struct vt_pkt qi = {};
    vt_inner_fields(&w->fr, &qi);
    vt_fv_put(w->v[1], &qi);
    asm volatile("" ::: "memory");
    return vt_run(c, w->v[1]);
}

/* ---- Decide once per skb -------------------------------------------------
 * With a packet filter, the headers are read and matched where an skb is
 * first seen; the verdict is remembered by skb address and later hooks answer
 * from that memory without reading the skb (reading it costs ~100 ns per
 * hook, and a bridged packet passes ~10). Forgotten at kfree_skb/consume_skb
 * (attached for that alone when drop events are not asked for).
 *
 * Trust: the kernel also frees skbs where neither tracepoint fires (TCP's
 * __kfree_skb and kfree_skb_partial, the NAPI skb cache), and the slab hands
 * the address, often with the same data buffer, to the next skb within
 * microseconds. So a memory is used only where the kernel still holds the skb
 * it describes: each entry keeps the stage the skb was last seen at, and a
 * hook trusts only stages that must lead to it:
 *   net_dev_queue -> net_dev_start_xmit   (in the qdisc or noqueue; also a
 *                                           retried transmit)
 *   net_dev_start_xmit -> netif_rx         (veth hands the skb to its peer,
 *                                           nested in that transmit)
 *   netif_rx -> netif_receive_skb          (the backlog queue holds it)
 *   queued, transmitting or backlogged -> kfree_skb/consume_skb
 * "Nested" is checked on the per-CPU transmit stack (vt_tx: the skb's
 * start_xmit has not returned). On these steps the device layer holds the
 * skb and does not change its headers (tc and netfilter egress run before
 * net_dev_queue; tc ingress after netif_receive_skb). Everything else is read
 * and matched again:
 * - what leaves a receive (netif_receive_skb -> the bridge forwarding the
 *   skb, or clones of it when flooding): whether the skb is still the one
 *   received cannot be told without reading it (it may have been freed
 *   without a tracepoint, and its address and buffer handed to the next skb
 *   sent: the fast-path test caught exactly that when clones inherited the
 *   verdict through skb->head), and routing may have rewritten the headers
 *   (NAT) in between;
 * - a transmit nested in another of the same skb (br0 -> its port, a tunnel
 *   device -> the underlay, which pushed new outer headers on the skb).
 * A wrong memory could come only from a queue freeing its skb without a
 * tracepoint, or from a device program rewriting headers between its
 * transmit and the peer's netif_rx (netkit).
 *
 * Used only when a filter is set (vt_cfg.active): without one every skb
 * matches and there is nothing to remember.
 *
 * Memory: VT_DEC_MAP picks the map (0: one shared direct-mapped array, the
 * default, measured in bench/README.md; 1: per-CPU array; 2: hash; 3: LRU
 * hash). Array entries are one u64, skb | stage << 1 | verdict (sk_buffs are
 * 8-byte aligned), written and read whole, so CPUs racing on a slot can only
 * lose an entry (then the skb is read again), never mix two. Shared, not
 * per-CPU: an skb queued on one CPU may be transmitted or freed on another,
 * and a per-CPU entry left behind there would outlive the skb. */
#ifndef VT_NO_DECIDE /* bench: the memory compiled out */
#define VT_DECIDE 1
#endif

#define VT_ST_QUEUED 0
#define VT_ST_XMIT 1
#define VT_ST_RXQ 2
#define VT_ST_RCVD 3

#ifdef VT_DECIDE
#ifndef VT_DEC_MAP
#define VT_DEC_MAP 0
#endif
#define VT_DEC_SLOTS 4096 /* power of 2 */
#if VT_DEC_MAP == 0
BPF_ARRAY(vt_dec, u64, VT_DEC_SLOTS);
#elif VT_DEC_MAP == 1
BPF_PERCPU_ARRAY(vt_dec, u64, VT_DEC_SLOTS);
#elif VT_DEC_MAP == 2
BPF_HASH(vt_dec, u64, u64, 65536);
#else
BPF_TABLE("lru_hash", u64, u64, vt_dec, 65536);
#endif

#if VT_DEC_MAP <= 1
static __always_inline u32 vt_dec_slot(u64 skb)
{
    return (u32)((skb >> 3) ^ (skb >> 15)) & (VT_DEC_SLOTS - 1);
}
#endif

/* (stage << 1 | verdict) remembered for skb, or -1; *at: where it is kept
 * (0 for none), so that a hook answering from memory writes its stage back
 * with vt_dec_set without a second lookup. */
static __always_inline int vt_dec_get(u64 skb, u64 **at)
{
#if VT_DEC_MAP <= 1
    u32 k = vt_dec_slot(skb);
    u64 *v = vt_dec.lookup(&k);
    *at = v;
    if (v && (*v & ~7ULL) == skb)
        return *v & 7;
    return -1;
#else
    u64 *v = vt_dec.lookup(&skb);
    *at = v;
    return v ? (int)*v : -1;
#endif
}

/* Remember (stage, verdict) for skb in the slot vt_dec_get found for it. */
static __always_inline void vt_dec_set(u64 skb, u64 *at, int stage, int verdict)
{
    u64 val = (u64)(stage << 1 | verdict);
#if VT_DEC_MAP <= 1
    if (at)
        *at = skb | val;
#else
    if (at)
        *at = val;
    else
        vt_dec.update(&skb, &val);
#endif
}

/* Forget skb's entry, found by vt_dec_get (which returned >= 0). */
static __always_inline void vt_dec_clear(u64 skb, u64 *at)
{
#if VT_DEC_MAP <= 1
    if (at)
        *at = 0;
#else
    vt_dec.delete(&skb);
#endif
}

static __always_inline void vt_dec_put(u64 skb, int stage, int verdict)
{
    u64 val = (u64)(stage << 1 | verdict);
#if VT_DEC_MAP <= 1
    u32 k = vt_dec_slot(skb);
    u64 *v = vt_dec.lookup(&k);
    if (v)
        *v = skb | val;
#else
    vt_dec.update(&skb, &val);
#endif
}

static __always_inline void vt_dec_forget(u64 skb)
{
#if VT_DEC_MAP <= 1
    u32 k = vt_dec_slot(skb);
    u64 *v = vt_dec.lookup(&k);
    if (v && (*v & ~7ULL) == skb)
        *v = 0;
#else
    vt_dec.delete(&skb);
#endif
}

/* Is skb's net_dev_start_xmit still running on this CPU (pushed, not popped)? */
static __always_inline int vt_in_xmit(u64 skb)
{
    int zero = 0;
    struct vt_txstack *s = vt_tx.lookup(&zero);
    if (!s)
        return 0;
    u32 n = s->n;
#pragma unroll
    for (u32 k = 1; k <= VT_TXSTACK; k++) {
        if (k > n)
            break;
        if (s->skb[(n - k) & (VT_TXSTACK - 1)] == skb)
            return 1;
    }
    return 0;
}

/* The remembered verdict m (from vt_dec_get) where this hook may trust it
 * (see above), else -1. */
static __always_inline int vt_recall(u16 point, void *skb, int m)
{
    if (m < 0)
        return -1;
    int st = m >> 1;
    if (point == VT_P_NET_DEV_START_XMIT) {
        if (st == VT_ST_QUEUED || st == VT_ST_XMIT)
            return m & 1;
    } else if (point == VT_P_NETIF_RX) {
        if (st == VT_ST_XMIT && vt_in_xmit((u64)skb))
            return m & 1;
    } else if (point == VT_P_NETIF_RECEIVE_SKB) {
        if (st == VT_ST_RXQ)
            return m & 1;
    } else if (point == VT_P_KFREE_SKB || point == VT_P_CONSUME_SKB) {
        if (st != VT_ST_RCVD)
            return m & 1;
    }
    return -1;
}

/* The stage an skb is in after this hook, or -1 (frees: forgotten in
 * vt_skb_seen). */
static __always_inline int vt_stage_after(u16 point)
{
    if (point == VT_P_NET_DEV_QUEUE)
        return VT_ST_QUEUED;
    if (point == VT_P_NET_DEV_START_XMIT)
        return VT_ST_XMIT;
    if (point == VT_P_NETIF_RX)
        return VT_ST_RXQ;
    if (point == VT_P_NETIF_RECEIVE_SKB)
        return VT_ST_RCVD;
    return -1;
}

/* Remember the verdict after this hook. */
static __always_inline void vt_remember(u16 point, void *skb, int verdict)
{
    int st = vt_stage_after(point);
    if (st >= 0)
        vt_dec_put((u64)skb, st, verdict);
}
#endif /* VT_DECIDE */

/* Reserve an event (ring buffer) or take the per-CPU scratch (perf buffer). */
static __always_inline struct vt_event *vt_reserve(void)
{
#ifdef VT_RINGBUF
    struct vt_event *e = vt_events.ringbuf_reserve(sizeof(struct vt_event));
    if (!e) {
        int zero = 0;
        u64 *lost = vt_lost.lookup(&zero);
        if (lost)
            *lost += 1;
    }
    return e;
#else
    int zero = 0;
    return vt_scratch.lookup(&zero);
#endif
}

static __always_inline void vt_submit(void *ctx, struct vt_event *e)
{
#ifdef VT_RINGBUF
    vt_events.ringbuf_submit(e, 0);
#else
    vt_events.perf_submit(ctx, e, sizeof(*e));
#endif
}

static __always_inline void vt_fill_dev(struct vt_event *e, void *dev, u32 netns)
{
    e->netns = netns;
    if (dev) {
        VT_READ(e->ifindex, (char *)dev + VT_DEV_IFINDEX);
        bpf_probe_read_kernel_str(e->ifname, sizeof(e->ifname), (char *)dev + VT_DEV_NAME);
    }
}

static __always_inline void vt_fill_common(struct vt_event *e, u16 point, u64 ts)
{
    /* ring buffer memory is not zeroed; a memset this size would become a
     * call to memset, which BPF cannot make */
    u64 *w = (u64 *)e;
#pragma unroll
    for (int i = 0; i < sizeof(*e) / 8; i++)
        w[i] = 0;
    e->ts = ts;
    e->point = point;
    e->cpu = bpf_get_smp_processor_id();
    e->old_state = 0xff;
    e->new_state = 0xff;
}

/* The event for an skb that passed the filters: decoded again in full from
 * the frame already read (no reads), with length, clone bit and device. The
 * arguments come in w (dev, netns, location, reason; netns 0 when not known
 * yet, without -n: then read here), written by the caller before a compiler
 * barrier: all the ways here then reach this code in one verifier state, and
 * it is verified once per program, not once per way. Returns 1 (reported,
 * or counted as lost). */
static __always_inline int vt_emit(void *ctx, u16 point, void *skb, struct vt_work *w)
{
    asm volatile("" ::: "memory");
    struct vt_frame *fr = &w->fr;
    void *dev = (void *)w->dev;
    u32 netns = w->netns;
    u64 location = w->location;
    u32 reason = w->reason;
    u64 ts = bpf_ktime_get_ns();
    struct vt_pkt p = {};
    vt_fields(fr, &p);
    if (!dev)
        dev = (void *)vt_ptr(skb, VT_SKB_DEV);
    if (!netns)
        netns = vt_skb_netns(skb, dev);
    struct vt_event *e = vt_reserve();
    if (!e)
        return 1;
    vt_fill_common(e, point, ts);
    e->skb = (u64)skb;
    e->head = fr->head;
    e->location = location;
    e->reason = reason;
    VT_READ(e->len, (char *)skb + VT_SKB_LEN);
    u8 cl = 0;
    VT_READ(cl, (char *)skb + VT_SKB_CLONED_BYTE);
    e->cloned = (cl & VT_SKB_CLONED_MASK) ? 1 : 0;
    __builtin_memcpy(&e->pkt, &p, sizeof(p));
    if (fr->encap) {
        struct vt_pkt pi = {};
        e->vni = vt_inner_fields(fr, &pi);
        __builtin_memcpy(&e->inner, &pi, sizeof(pi));
        e->pkt.flags |= VT_PKT_VXLAN;
    }
    vt_fill_dev(e, dev, netns);
    vt_submit(ctx, e);
    return 1;
}

/* net_dev_start_xmit's verdict onto the per-CPU transmit stack (see vt_tx) */
static __always_inline void vt_tx_push(u64 skb, int ok)
{
    int zero = 0;
    struct vt_txstack *s = vt_tx.lookup(&zero);
    if (s) {
        u32 i = s->n & (VT_TXSTACK - 1);
        s->skb[i] = skb;
        s->ok[i] = ok;
        s->n += 1;
    }
}

/* The filter's loop runs in one program of its own, vt_decide, entered by a
 * tail call from every raw tracepoint program: the verifier walks a bounded
 * loop once per iteration, and inlined into each of the 6 skb programs
 * (twice: outer and VXLAN inner headers) it cost ~15 ms of verification per
 * program on every start; tail-called, it is verified once. Function probes
 * (kprobe/fentry: other program types, which cannot share the program
 * array) run it inline. */
BPF_PROG_ARRAY(vt_progs, 1);
#define VT_PROG_DECIDE 0

/* One skb event: the remembered verdict first (with a filter: see "Decide
 * once per skb"), then the namespace test when there is one (-n), then
 * decode + filter where nothing is remembered, then reserve and fill. `dev`
 * may be 0 (then skb->dev is read). `tail`: a raw tracepoint program, which
 * hands an undecided skb to vt_decide (which then also reports it and, at
 * net_dev_start_xmit, pushes the verdict: this program does not continue).
 * Returns 1 when the skb passed the filters (reported, or counted as lost),
 * else 0. */
static __always_inline int vt_skb_seen(void *ctx, u16 point, void *skb, void *dev,
                                       u64 location, u32 reason, int tail)
{
    struct vt_cfg *c = vt_config();
    if (!c)
        return 0;
    int verdict = -1;
    int active = c->active; /* read once: the verifier then knows it below */
#ifdef VT_DECIDE
    int decide = active;
    /* net_dev_queue trusts no memory (an skb's first hook): no lookup there.
     * Elsewhere one lookup serves the recall, the forgetting at a free and the
     * new stage (an entry's slot is read once and written in place). */
    if (decide && point != VT_P_NET_DEV_QUEUE) {
        u64 *at = 0;
        int m = vt_dec_get((u64)skb, &at);
        verdict = vt_recall(point, skb, m);
        if (point == VT_P_KFREE_SKB || point == VT_P_CONSUME_SKB) {
            if (m >= 0)
                vt_dec_clear((u64)skb, at);
        }
        if (verdict == 0) {
            int st = vt_stage_after(point);
            if (st >= 0)
                vt_dec_set((u64)skb, at, st, 0);
            return 0;
        }
    }
#endif
    u32 netns = 0;
    if (c->scoped) {
        if (!dev)
            dev = (void *)vt_ptr(skb, VT_SKB_DEV);
        if (dev) {
            netns = vt_dev_netns_scoped(c, dev);
        } else {
            netns = vt_skb_netns(skb, 0); /* no device: the socket's netns */
            if (netns && !vt_netns_ok(c, netns))
                netns = 0;
        }
        if (!netns) {
#ifdef VT_DECIDE
            if (decide) {
                if (verdict == 1)
                    vt_remember(point, skb, 1);
                else
                    vt_dec_forget((u64)skb); /* seen here, not decided: no stale stage */
            }
#endif
            return 0;
        }
    }
    int zero = 0;
    struct vt_work *w = vt_work.lookup(&zero);
    if (!w)
        return 0;
    struct vt_frame *fr = &w->fr;
    vt_read_frame(c, skb, fr);
    if (verdict < 0) {
        /* No protocol: nothing decoded. With no device either, not a network
         * packet (netlink and other socket-only skbs, freed by the thousand on
         * a busy host). */
        if (!fr->protocol) {
            if (!c->empty) {
#ifdef VT_DECIDE
                if (decide)
                    vt_remember(point, skb, 0);
#endif
                return 0;
            }
            if (!dev)
                dev = (void *)vt_ptr(skb, VT_SKB_DEV);
            if (!dev)
                return 0;
        }
        if (active) {
            w->point = point;
            w->skb = (u64)skb;
            w->dev = (u64)dev;
            w->netns = netns;
            w->location = location;
            w->reason = reason;
            if (tail) {
                vt_progs.call(ctx, VT_PROG_DECIDE);
                return 0; /* vt_decide missing: nothing reported */
            }
            /* Inline (function probes). Nothing decoded and no device or
             * netns crosses the loop in a register (the event decodes again
             * from w): every kind of packet reaches the loop in the same
             * verifier state, and it is verified once. */
            asm volatile("" ::: "memory");
            verdict = vt_filter(c, w);
#ifdef VT_DECIDE
            vt_remember(point, skb, verdict);
#endif
            if (!verdict)
                return 0;
            return vt_emit(ctx, point, skb, w);
        }
    }
#ifdef VT_DECIDE
    else {
        vt_remember(point, skb, 1);
    }
#endif
    w->dev = (u64)dev;
    w->netns = netns;
    w->location = location;
    w->reason = reason;
    return vt_emit(ctx, point, skb, w);
}

/* The filter over an skb a raw tracepoint program could not decide from
 * memory (see vt_progs): the fields and the event's arguments are in
 * vt_work. Matches by the outer or, for a VXLAN datagram, the inner headers;
 * remembers the verdict, reports a match, and finishes net_dev_start_xmit's
 * bookkeeping for it. */
int vt_decide(struct bpf_raw_tracepoint_args *ctx)
{
    struct vt_cfg *c = vt_config();
    int zero = 0;
    struct vt_work *w = vt_work.lookup(&zero);
    if (!c || !w)
        return 0;
    u16 point = w->point;
    void *skb = (void *)w->skb;
    int verdict = vt_filter(c, w);
#ifdef VT_DECIDE
    vt_remember(point, skb, verdict);
#endif
    int ok = 0;
    if (verdict)
        ok = vt_emit(ctx, point, skb, w);
    if (point == VT_P_NET_DEV_START_XMIT)
        vt_tx_push((u64)skb, ok);
    return 0;
}

/* fentry programs must return 0; tracepoint and kprobe returns are ignored */
static __always_inline int vt_skb_event(void *ctx, u16 point, void *skb, void *dev,
                                        u64 location, u32 reason)
{
    vt_skb_seen(ctx, point, skb, dev, location, reason, 1);
    return 0;
}

/* the same from a function probe (kprobe/fentry): the filter inline */
static __always_inline int vt_fn_event(void *ctx, u16 point, void *skb, void *dev,
                                       u64 location, u32 reason)
{
    vt_skb_seen(ctx, point, skb, dev, location, reason, 0);
    return 0;
}

#endif /* VETHTRACE_H */
