-- Answers that ran into the token limit (answer.max_new_tokens) per round, and how many kept pairs contain one.
-- A cut-off answer usually becomes the rejected side of a pair, so DPO can learn "finished beats truncated"
-- instead of "grounded beats wrong". If cut_off_share is more than a few percent, raise answer.max_new_tokens
-- (and critique.max_new_tokens, which also caps the revision) before the next round. max_tokens shows the limit
-- that was hit.
--
-- Run:  savi query - --run NAME < examples/queries/answers_cut_off.sql

with cut as (
    select run, round, answer_id
    from answers
    where not finished
),
kept_with_cut as (
    select p.run, p.round, count(distinct p.pair_id) as kept_pairs_with_cut_off
    from pairs p
    join candidates c on c.run = p.run and c.round = p.round and c.pair_id = p.pair_id
    join cut on cut.run = c.run and cut.round = c.round
        and cut.answer_id in (c.chosen_source, c.rejected_source)
    where p.kept
    group by p.run, p.round
)
select
    a.run,
    a.round,
    count(*) as answers,
    count_if(not a.finished) as cut_off,
    round(count_if(not a.finished) / count(*), 3) as cut_off_share,
    round(avg(a.num_tokens), 1) as mean_tokens,
    quantile_disc(a.num_tokens, 0.95) as p95_tokens,
    max(a.num_tokens) as max_tokens,
    coalesce(any_value(k.kept_pairs_with_cut_off), 0) as kept_pairs_with_cut_off
from answers a
left join kept_with_cut k on k.run = a.run and k.round = a.round
group by a.run, a.round
order by a.run, a.round;
