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
    return vt_skb_event(ctx, VT_P_NET_DEV_START_XMIT, (void *)ctx->args[0],
                        (void *)ctx->args[VT_ARG_START_XMIT_DEV], 0, 0);
}
#endif

/* The skb is NOT read here: veth delivers synchronously, the peer may already
 * have freed it. Device, length and rc come from the arguments; with a filter,
 * only skbs that matched at net_dev_start_xmit are reported. */
#ifdef VT_HAVE_NET_DEV_XMIT
RAW_TRACEPOINT_PROBE(net_dev_xmit)
{
    u64 ts = bpf_ktime_get_ns();
    void *dev = (void *)ctx->args[VT_ARG_XMIT_DEV];
    u32 netns = vt_dev_netns(dev);
    if (!vt_netns_ok(netns))
        return 0;
    u64 skb = ctx->args[0];
#ifdef VT_FILTER_ACTIVE
    if (!vt_tx_pending.lookup(&skb))
        return 0;
    vt_tx_pending.delete(&skb);
#endif
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
