/* Function probes on the veth and bridge paths, for kernels that allow them:
 * kprobes (VT_KPROBE) or fentry (VT_FENTRY). They see what no tracepoint
 * marks: the veth transmit itself, the bridge's rx_handler taking a frame
 * (br_handle_frame), its forwarding decision (br_forward, with the egress
 * port) and delivery to the bridge's own stack (br_pass_frame_up).
 * Parameter positions (VT_KARG_*) come from the functions' BTF. */
#include "vethtrace.h"

#ifdef VT_KPROBE
/* struct pt_regs is opaque too: VT_PTREGS_ARG<n> are BTF offsets of the
 * registers holding argument n (x86_64: di, si, dx, cx). */
#define VT_PARM_OFF(n) ((n) == 0 ? VT_PTREGS_ARG0 : (n) == 1 ? VT_PTREGS_ARG1 : \
                        (n) == 2 ? VT_PTREGS_ARG2 : VT_PTREGS_ARG3)
#define VT_PARM(ctx, n) (*(u64 *)((char *)(ctx) + VT_PARM_OFF(n)))

#ifdef VT_KARG_VETH_XMIT_SKB
int vt_kp_veth_xmit(void *ctx)
{
    return vt_fn_event(ctx, VT_P_VETH_XMIT, (void *)VT_PARM(ctx, VT_KARG_VETH_XMIT_SKB),
                        (void *)VT_PARM(ctx, VT_KARG_VETH_XMIT_DEV), 0, 0);
}
#endif

#ifdef VT_KARG_BR_HANDLE_FRAME_PSKB
int vt_kp_br_handle_frame(void *ctx)
{
    void *skb = (void *)vt_ptr((void *)VT_PARM(ctx, VT_KARG_BR_HANDLE_FRAME_PSKB), 0);
    return vt_fn_event(ctx, VT_P_BR_HANDLE_FRAME, skb, 0, 0, 0);
}
#endif

#if defined(VT_KARG_BR_FORWARD_SKB) && defined(VT_BRPORT_DEV)
/* the event's device is the egress port the bridge chose */
int vt_kp_br_forward(void *ctx)
{
    void *to = (void *)VT_PARM(ctx, VT_KARG_BR_FORWARD_TO);
    return vt_fn_event(ctx, VT_P_BR_FORWARD, (void *)VT_PARM(ctx, VT_KARG_BR_FORWARD_SKB),
                        (void *)vt_ptr(to, VT_BRPORT_DEV), 0, 0);
}
#endif

#ifdef VT_KARG_BR_PASS_FRAME_UP_SKB
int vt_kp_br_pass_frame_up(void *ctx)
{
    return vt_fn_event(ctx, VT_P_BR_PASS_FRAME_UP,
                        (void *)VT_PARM(ctx, VT_KARG_BR_PASS_FRAME_UP_SKB), 0, 0, 0);
}
#endif
#endif

#ifdef VT_FENTRY
/* fentry programs see the arguments as an array of u64 (BPF_PROG) */
#ifdef VT_VMLINUX_VETH_XMIT
KFUNC_PROBE(veth_xmit, void *skb, void *dev)
{
    return vt_fn_event(ctx, VT_P_VETH_XMIT, skb, dev, 0, 0);
}
#endif

#ifdef VT_VMLINUX_BR_HANDLE_FRAME
KFUNC_PROBE(br_handle_frame, void *pskb)
{
    return vt_fn_event(ctx, VT_P_BR_HANDLE_FRAME, (void *)vt_ptr(pskb, 0), 0, 0, 0);
}
#endif

#ifdef VT_VMLINUX_BR_FORWARD
KFUNC_PROBE(br_forward, void *to, void *skb)
{
    return vt_fn_event(ctx, VT_P_BR_FORWARD, skb, (void *)vt_ptr(to, VT_BRPORT_DEV), 0, 0);
}
#endif

#ifdef VT_VMLINUX_BR_PASS_FRAME_UP
KFUNC_PROBE(br_pass_frame_up, void *skb)
{
    return vt_fn_event(ctx, VT_P_BR_PASS_FRAME_UP, skb, 0, 0, 0);
}
#endif
#endif
