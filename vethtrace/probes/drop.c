/* Frees: skb:kfree_skb (a drop, with the kernel's enum skb_drop_reason) and
 * skb:consume_skb (normal end of life). Both retire an skb identity in user
 * space, since skb addresses are reused within microseconds.
 * With VT_FORGET_ONLY (a filter, and drop events not asked for) they report
 * nothing and only forget the skb's remembered verdict (vethtrace.h). */
#include "vethtrace.h"

#if defined(VT_FORGET_ONLY) && defined(VT_DECIDE)
#define vt_skb_event(ctx, point, skb, dev, location, reason) \
    (vt_dec_forget((u64)(skb)), 0)
#elif defined(VT_FORGET_ONLY)
#define vt_skb_event(ctx, point, skb, dev, location, reason) 0
#endif

#ifdef VT_HAVE_KFREE_SKB
RAW_TRACEPOINT_PROBE(kfree_skb)
{
#ifdef VT_ARG_KFREE_REASON
    u32 reason = (u32)ctx->args[VT_ARG_KFREE_REASON];
#else
    u32 reason = 0; /* before 5.17 the kernel gave no reason */
#endif
    return vt_skb_event(ctx, VT_P_KFREE_SKB, (void *)ctx->args[0], 0,
                        ctx->args[VT_ARG_KFREE_LOCATION], reason);
}
#endif

#ifdef VT_HAVE_CONSUME_SKB
RAW_TRACEPOINT_PROBE(consume_skb)
{
#ifdef VT_ARG_CONSUME_LOCATION
    u64 location = ctx->args[VT_ARG_CONSUME_LOCATION];
#else
    u64 location = 0; /* before 6.3 consume_skb had no location */
#endif
    return vt_skb_event(ctx, VT_P_CONSUME_SKB, (void *)ctx->args[0], 0, location, 0);
}
#endif
