-- What the self-critique finds wrong in the policy's own answers, per round: how many critiques name each
-- error type, and how many found no error at all. VideoSAVi reports these error counts falling from one
-- iteration to the next as the policy improves; the same trend here is a sign the rounds are working. A
-- critique may name several types, so the shares of a round can add up to more than 1.
--
-- Run:  savi query - --run NAME < examples/queries/critique_error_types.sql

with typed as (
    select run, round, critique_id, unnest(error_types) as error_type
    from critiques
    where mode = 'critique' and found_errors
    union all
    select run, round, critique_id,
           case when found_errors is null then '(verdict unparsed)' else '(no errors found)' end
    from critiques
    where mode = 'critique' and (found_errors is null or not found_errors)
    union all
    select run, round, critique_id, '(errors, type not named)'
    from critiques
    where mode = 'critique' and found_errors and len(error_types) = 0
)
select
    t.run,
    t.round,
    t.error_type,
    count(distinct t.critique_id) as critiques,
    round(count(distinct t.critique_id) / any_value(n.total), 3) as share_of_critiques
from typed t
join (select run, round, count(*) as total from critiques where mode = 'critique' group by run, round) n
    on n.run = t.run and n.round = t.round
group by t.run, t.round, t.error_type
order by t.run, t.round, critiques desc, t.error_type;
