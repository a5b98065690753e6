-- What the filter did with each round's candidate pairs: how many it kept, and how many it dropped for each
-- reason, with each outcome's share of the round. The reasons come from the critique (no_errors,
-- revision_unchanged, empty_critique, empty_revision, tie) or from the filter's own rules (empty_text,
-- near_duplicate, length_ratio, low_clip_margin). A round that keeps few pairs shows here which rule to look at.
--
-- Run:  savi query - --run NAME < examples/queries/drop_reasons_per_round.sql
-- (without --run, every run of the workspace; the run column tells them apart)

select
    run,
    round,
    case when kept then 'kept' else drop_reason end as outcome,
    count(*) as pairs,
    round(count(*) / sum(count(*)) over (partition by run, round), 3) as share
from pairs
group by run, round, outcome
order by run, round, outcome <> 'kept', pairs desc, outcome;
