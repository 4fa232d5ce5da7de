/* Device transmit and receive: the net:* tracepoints, as raw tracepoints so
 * the skb and device pointers are at hand (the classic records carry only
 * names). Argument positions VT_ARG_* come from the btf_trace_* typedefs. */
#include "vethtrace.h"

#ifdef VT_HAVE_NET_DEV_QUEUE
RAW_TRACEPOINT_PROBE(net_dev_queue)
{
    return vt_skb_event(ctx, VT_P_NET_DEV_QUEUE, (void *)ctx->args[0], 0, 0, 0);
}
#endif

#ifdef VT_HAVE_NET_DEV_START_XMIT
RAW_TRACEPOINT_PROBE(net_dev_start_xmit)
{
    void *skb = (void *)ctx->args[0];
    /* an undecided skb goes on to vt_decide, which pushes its verdict */
    int ok = vt_skb_seen(ctx, VT_P_NET_DEV_START_XMIT, skb,
                         (void *)ctx->args[VT_ARG_START_XMIT_DEV], 0, 0, 1);
    vt_tx_push((u64)skb, ok);
    return 0;
}
#endif

/* The skb is NOT read here: veth delivers synchronously, the peer may already
 * have freed it. Reported when its net_dev_start_xmit was (the verdict on the
 * per-CPU stack, see vethtrace.h: so netns and packet filter already held);
 * device, length and rc come from the arguments. The matching entry is the
 * newest one for this skb; entries above it are stale (a start_xmit seen
 * before this program was attached) and go with it. */
#ifdef VT_HAVE_NET_DEV_XMIT
RAW_TRACEPOINT_PROBE(net_dev_xmit)
{
    u64 skb = ctx->args[0];
    int zero = 0;
    struct vt_txstack *s = vt_tx.lookup(&zero);
    if (!s)
        return 0;
    u32 n = s->n;
    int ok = 0;
#pragma unroll
    for (u32 k = 1; k <= VT_TXSTACK; k++) {
        if (k > n)
            break;
        u32 i = (n - k) & (VT_TXSTACK - 1);
        if (s->skb[i] == skb) {
            ok = s->ok[i];
            s->n = n - k;
            break;
        }
    }
    if (!ok)
        return 0;
    u64 ts = bpf_ktime_get_ns();
    void *dev = (void *)ctx->args[VT_ARG_XMIT_DEV];
    u32 netns = vt_dev_netns(dev);
    struct vt_event *e = vt_reserve();
    if (!e)
        return 0;
    vt_fill_common(e, VT_P_NET_DEV_XMIT, ts);
    e->skb = skb;
    e->rc = (s32)ctx->args[VT_ARG_XMIT_RC];
    e->len = (u32)ctx->args[VT_ARG_XMIT_LEN];
    vt_fill_dev(e, dev, netns);
    vt_submit(ctx, e);
    return 0;
}
#endif

#ifdef VT_HAVE_NETIF_RX
RAW_TRACEPOINT_PROBE(netif_rx)
{
    return vt_skb_event(ctx, VT_P_NETIF_RX, (void *)ctx->args[0], 0, 0, 0);
}
#endif

#ifdef VT_HAVE_NETIF_RECEIVE_SKB
RAW_TRACEPOINT_PROBE(netif_receive_skb)
{
    return vt_skb_event(ctx, VT_P_NETIF_RECEIVE_SKB, (void *)ctx->args[0], 0, 0, 0);
}
#endif
