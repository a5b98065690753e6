-- How DPO training went in each round, from the per-step log: the loss at the first and last step, and the
-- reward accuracy (share of pairs where the policy prefers the chosen answer more than the reference does) and
-- reward margin averaged over the first and the second half of the steps. Healthy training has the loss
-- falling from ln 2 = 0.693 and accuracy and margin rising from the early half to the late one. If the chosen
-- and rejected rewards both fall while the margin grows, the policy is making both answers less likely, which
-- is worth a look at the pairs before the next round.
--
-- Run:  savi query - --run NAME < examples/queries/reward_margins.sql
-- Every step:  savi query "select round, step, loss, reward_accuracy, reward_margin from train_log order by 1, 2"

with log as (
    select *, step > max(step) over (partition by run, round) / 2 as late_half
    from train_log
)
select
    run,
    round,
    count(*) as steps,
    round(max(epoch), 2) as epochs,
    round(arg_min(loss, step), 4) as first_loss,
    round(arg_max(loss, step), 4) as last_loss,
    round(avg(reward_accuracy) filter (where not late_half), 3) as early_reward_accuracy,
    round(avg(reward_accuracy) filter (where late_half), 3) as late_reward_accuracy,
    round(avg(reward_margin) filter (where not late_half), 4) as early_reward_margin,
    round(avg(reward_margin) filter (where late_half), 4) as late_reward_margin,
    round(arg_max(chosen_reward, step), 4) as last_chosen_reward,
    round(arg_max(rejected_reward, step), 4) as last_rejected_reward
from log
group by run, round
order by run, round;
