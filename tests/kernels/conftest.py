"""tests/kernels/work/ holds downloads, images, pip trees and project snapshots
for the guests: never collect tests from there."""

collect_ignore = ["work"]
