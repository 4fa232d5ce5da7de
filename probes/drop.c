/* Frees: skb:kfree_skb (a drop, with the kernel's enum skb_drop_reason) and
 * skb:consume_skb (normal end of life). Both retire an skb identity in user
 * space, since skb addresses are reused within microseconds. */
#include "vethtrace.h"

RAW_TRACEPOINT_PROBE(kfree_skb)
{
    return vt_skb_event(ctx, VT_P_KFREE_SKB, (void *)ctx->args[0], 0,
                        ctx->args[VT_ARG_KFREE_LOCATION], (u32)ctx->args[VT_ARG_KFREE_REASON]);
}

RAW_TRACEPOINT_PROBE(consume_skb)
{
    return vt_skb_event(ctx, VT_P_CONSUME_SKB, (void *)ctx->args[0], 0,
                        ctx->args[VT_ARG_CONSUME_LOCATION], 0);
}
