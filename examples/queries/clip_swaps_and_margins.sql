-- The CLIP grounding check per round: of the pairs that reached CLIP (those not dropped by the critique's
-- verdict or the text rules), how often CLIP found the rejected text better grounded in the frames and swapped
-- the pair, and how far apart the chosen and rejected texts' CLIP scores are in the kept pairs. A high swap
-- rate means CLIP often disagrees with the self-critique; a margin near zero means the kept pairs differ
-- little in grounding (raise filter.min_clip_margin to keep only clearer ones).
--
-- Run:  savi query - --run NAME < examples/queries/clip_swaps_and_margins.sql

select
    run,
    round,
    count(*) filter (where chosen_clip is not null) as scored,
    count_if(swapped) as swapped,
    round(count_if(swapped) / nullif(count(*) filter (where chosen_clip is not null), 0), 3) as swap_rate,
    count_if(kept) as kept,
    round(avg(chosen_clip - rejected_clip) filter (where kept), 4) as mean_margin,
    round(median(chosen_clip - rejected_clip) filter (where kept), 4) as median_margin,
    round(min(chosen_clip - rejected_clip) filter (where kept), 4) as min_margin,
    round(avg(chosen_clip) filter (where kept), 4) as mean_chosen_clip,
    round(avg(rejected_clip) filter (where kept), 4) as mean_rejected_clip
from pairs
group by run, round
order by run, round;
