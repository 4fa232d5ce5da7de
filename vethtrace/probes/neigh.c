/* Neighbour (ARP/ND) state: the neigh:* tracepoints as raw tracepoints, so
 * each event carries the device's netns and ifindex (classic records only
 * name the device, and names repeat across namespaces).
 *
 * Filtering: only the namespace scope here. The packet filter (a neighbour
 * event matches as an ARP packet about its address) is applied by Python
 * (collect/filter.py, keeps_neighbour): these events are rare, and the
 * filter's loop in each of these five programs cost more verification time
 * on every start than all the other probes together. */
#include "vethtrace.h"

#ifdef VT_NEIGH_DEV /* struct neighbour known from BTF */

static __always_inline int vt_neigh_event(void *ctx, u16 point, void *n, void *dev,
                                          void *tbl, void *pkey, u8 old_state,
                                          u8 new_state, s32 rc, void *lladdr)
{
    struct vt_cfg *c = vt_config();
    if (!c)
        return 0;
    u64 ts = bpf_ktime_get_ns();
    if (n) {
        dev = (void *)vt_ptr(n, VT_NEIGH_DEV);
        tbl = (void *)vt_ptr(n, VT_NEIGH_TBL);
        pkey = (char *)n + VT_NEIGH_KEY;
    }
    u32 netns = dev ? vt_dev_netns(dev) : 0;
    if (!vt_netns_ok(c, netns))
        return 0;
    int family = 0;
    if (tbl)
        VT_READ(family, (char *)tbl + VT_NTBL_FAMILY);
    u8 key[16] = {};
    if (pkey)
        bpf_probe_read_kernel(key, family == 10 ? 16 : 4, pkey);
    struct vt_event *e = vt_reserve();
    if (!e)
        return 0;
    vt_fill_common(e, point, ts);
    e->family = family;
    __builtin_memcpy(e->key, key, 16);
    e->old_state = old_state;
    e->new_state = new_state;
    e->rc = rc;
    if (lladdr)
        bpf_probe_read_kernel(e->lladdr, 6, lladdr);
    else if (n)
        bpf_probe_read_kernel(e->lladdr, 6, (char *)n + VT_NEIGH_HA);
    vt_fill_dev(e, dev, netns);
    vt_submit(ctx, e);
    return 0;
}

static __always_inline u8 vt_nud(void *n)
{
    u8 s = 0xff;
    VT_READ(s, (char *)n + VT_NEIGH_NUD_STATE);
    return s;
}

#ifdef VT_HAVE_NEIGH_CREATE
RAW_TRACEPOINT_PROBE(neigh_create)
{
    return vt_neigh_event(ctx, VT_P_NEIGH_CREATE, 0, (void *)ctx->args[VT_ARG_NCREATE_DEV],
                          (void *)ctx->args[VT_ARG_NCREATE_TBL],
                          (void *)ctx->args[VT_ARG_NCREATE_PKEY], 0xff, 0, 0, 0);
}
#endif

/* fires before the change: old = current nud_state, new = the argument */
#ifdef VT_HAVE_NEIGH_UPDATE
RAW_TRACEPOINT_PROBE(neigh_update)
{
    void *n = (void *)ctx->args[0];
    return vt_neigh_event(ctx, VT_P_NEIGH_UPDATE, n, 0, 0, 0, vt_nud(n),
                          (u8)ctx->args[VT_ARG_NUPDATE_NEW], 0,
                          (void *)ctx->args[VT_ARG_NUPDATE_LLADDR]);
}
#endif

#ifdef VT_HAVE_NEIGH_UPDATE_DONE
RAW_TRACEPOINT_PROBE(neigh_update_done)
{
    void *n = (void *)ctx->args[0];
    return vt_neigh_event(ctx, VT_P_NEIGH_UPDATE_DONE, n, 0, 0, 0, 0xff, vt_nud(n),
                          (s32)ctx->args[1], 0);
}
#endif

#ifdef VT_HAVE_NEIGH_TIMER_HANDLER
RAW_TRACEPOINT_PROBE(neigh_timer_handler)
{
    void *n = (void *)ctx->args[0];
    return vt_neigh_event(ctx, VT_P_NEIGH_TIMER_HANDLER, n, 0, 0, 0, 0xff, vt_nud(n),
                          0, 0);
}
#endif

#ifdef VT_HAVE_NEIGH_EVENT_SEND_DONE
RAW_TRACEPOINT_PROBE(neigh_event_send_done)
{
    void *n = (void *)ctx->args[0];
    return vt_neigh_event(ctx, VT_P_NEIGH_EVENT_SEND_DONE, n, 0, 0, 0, 0xff, vt_nud(n),
                          (s32)ctx->args[1], 0);
}
#endif

#endif /* VT_NEIGH_DEV */
