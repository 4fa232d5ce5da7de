/* bridge:br_fdb_update: a bridge learned (or moved) a MAC on a port. Fires only
 * on learning, never per forwarded frame. The event's device is the bridge,
 * ifindex2/ifname2 the port. Not subject to the packet filter (no packet at
 * hand; rare), only to the netns filter. */
#include "vethtrace.h"

#ifdef VT_HAVE_BR_FDB_UPDATE
RAW_TRACEPOINT_PROBE(br_fdb_update)
{
    struct vt_cfg *c = vt_config();
    if (!c)
        return 0;
    u64 ts = bpf_ktime_get_ns();
    void *br = (void *)ctx->args[VT_ARG_FDB_BR];
    void *port = (void *)ctx->args[VT_ARG_FDB_PORT];
    void *brdev = (void *)vt_ptr(br, VT_BR_DEV);
    u32 netns = vt_dev_netns(brdev);
    if (!vt_netns_ok(c, netns))
        return 0;
    struct vt_event *e = vt_reserve();
    if (!e)
        return 0;
    vt_fill_common(e, VT_P_BR_FDB_UPDATE, ts);
    bpf_probe_read_kernel(e->lladdr, 6, (void *)ctx->args[VT_ARG_FDB_ADDR]);
    e->vid = (u16)ctx->args[VT_ARG_FDB_VID];
    if (port) {
        void *pdev = (void *)vt_ptr(port, VT_BRPORT_DEV);
        VT_READ(e->ifindex2, (char *)pdev + VT_DEV_IFINDEX);
        bpf_probe_read_kernel_str(e->ifname2, sizeof(e->ifname2), (char *)pdev + VT_DEV_NAME);
    }
    vt_fill_dev(e, brdev, netns);
    vt_submit(ctx, e);
    return 0;
}
#endif
