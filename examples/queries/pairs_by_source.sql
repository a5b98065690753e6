-- Where each round's pairs came from (critique, judge, temporal:reverse, temporal:shuffle, temporal:drop), how
-- many the filter kept, and why it dropped the others. A temporal source with many `temporal_same` drops is one
-- where the perturbed frames did not change the model's answer: the model did not use the order there. A
-- round that keeps many temporal pairs is teaching order, which self-critique rarely does.
--
-- Run:  savi query - --run NAME < examples/queries/pairs_by_source.sql

select
    run,
    round,
    mode as source,
    count(*) as pairs,
    count_if(kept) as kept,
    round(count_if(kept) / count(*), 3) as kept_share,
    count_if(drop_reason = 'temporal_same') as temporal_same,
    coalesce(mode(drop_reason) filter (where not kept), '') as commonest_drop
from pairs
group by run, round, mode
order by run, round, source;
