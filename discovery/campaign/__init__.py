"""The campaign driver: decides what to compute; executors do the computing.

Step order of one round (see DESIGN.md §1):

1. **learn**: refit the surrogate on every DFT label so far (formation energies from the DFT
   hull), and give generators the known structures and hits.
2. **propose**: every generator proposes candidates (in parallel on Ray).
3. **filter**: structural and compositional validity, de-duplication, novelty; rejections counted.
4. **score**: the surrogate predicts formation energy; predicted e_above_hull is that minus the
   hull's formation energy at the composition.
5. **screen**: CHGNet relaxes the most promising ``mlip.top_k`` and drops those far above the
   CHGNet hull (its own references; never mixed with DFT).
6. **select**: the policy picks ``dft_per_round`` candidates under the diversity constraints.
7. **validate**: DFT starts from the CHGNet-relaxed structures, asynchronously: a new round is
   planned as soon as the DFT queue runs low, so slots never wait for a batch barrier.
8. **record**: every result is appended to the ledger and tracked.

Cold start: until the DFT hull is complete and the surrogate has ``MIN_LABELS`` labels,
candidates are ranked by their CHGNet e_above_hull (an explicit cheap-fidelity prior, recorded
as model "mlip-prior" in the selection) instead of the surrogate; with the MLIP switched off they
are taken in a seeded random order (model "uninformed").

The driver is the only ledger writer and never imports Ray. Resume: everything decided or
computed is in the ledger, so a restarted driver re-submits only what has no result, and the
oracle's work folders return results that finished while no driver was watching.

Modules: `driver` (the loop, `Campaign`), `scoring` (surrogate predictions, posterior, policy
context), `screening` (the MLIP screen), `allocation` (generator bandit). What a campaign has
computed is a `discovery.campaign_state.CampaignState`, shared with the report.
"""

from discovery.campaign.driver import MIN_LABELS, Campaign, Reporter, hit_objective
from discovery.campaign.scoring import OBJECTIVE_PROPERTY

__all__ = ["Campaign", "Reporter", "hit_objective", "MIN_LABELS", "OBJECTIVE_PROPERTY"]
