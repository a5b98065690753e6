-- How many questions the policy asked per kind (spatial, temporal; or what, why, how) in each round, about how
-- many of the run's decoded videos, and how its output was read. Kinds should come out about even (--per-video
-- is split evenly across --kinds); a kind well below the others, or videos without questions, means the model
-- did not follow the question prompt. parsed_json counts questions read from the JSON the prompt asks for;
-- the others were recovered from numbered or plain lines.
--
-- Run:  savi query - --run NAME < examples/queries/questions_per_kind.sql

with decoded as (
    select run, count(*) as videos_decoded
    from samples
    where status = 'ok'
    group by run
)
select
    q.run,
    q.round,
    q.kind,
    count(*) as questions,
    count(distinct q.video_id) as videos,
    any_value(d.videos_decoded) as videos_decoded,
    round(count(*) / count(distinct q.video_id), 2) as per_video,
    round(avg(length(q.text)), 1) as mean_chars,
    count_if(q.parsed_as = 'json') as parsed_json,
    count_if(q.parsed_as = 'numbered') as parsed_numbered,
    count_if(q.parsed_as = 'lines') as parsed_lines
from questions q
left join decoded d on d.run = q.run
group by q.run, q.round, q.kind
order by q.run, q.round, q.kind;
