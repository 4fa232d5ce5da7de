"""The flight recorder (`vethtrace record --continuous`) and what reads its directory.

Stages, as elsewhere: collect/monitor.py (rtnetlink in every namespace) and
collect/bpf.py (kfree_skb) collect; here `loop` turns them into records,
`diff` says what changed in words, `drops` counts drops per second and place,
`store` rotates segments within size, age and disk limits; `segments` reads a
directory back (records in time order, the topology at any moment) and
`timeline` correlates changes with the drops that followed, for `report DIR`
(rendered by render/timeline.py). `when` parses sizes, durations and moments.
"""
