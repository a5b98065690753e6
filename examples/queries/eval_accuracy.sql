-- Benchmark accuracy per round (round 0 is the base model), overall and per category, with the change from
-- the base model in percentage points. Accuracy is over the questions with a public answer and a decodable
-- video, as in `savi report`: the protocol's figure (under lmms-eval, an unmatched reply that lmms-eval would
-- answer with a random letter earns 1/k, any other is wrong), and the strict one (savi's parser on the same
-- replies). The category "(overall)" is every category together; per-category rows are shown for benchmarks
-- that have more than one category.
--
-- Run:  savi query - --run NAME < examples/queries/eval_accuracy.sql

with accuracy as (
    select
        run,
        benchmark,
        coalesce(category, '(overall)') as category,
        round,
        count(*) filter (where answer is not null and error is null) as questions,
        count_if(correct and error is null) as correct,
        count_if(prediction is null and answer is not null and error is null) as unmatched,
        count_if(error is not null) as video_errors,
        -- Tables written before the lmms-eval protocol have no score: their correctness is the figure.
        avg(coalesce(score, correct::int)) filter (where answer is not null and error is null) as accuracy,
        avg(coalesce(strict_correct, correct)::int) filter (where answer is not null and error is null)
            as strict_accuracy
    from evals
    group by grouping sets ((run, benchmark, round), (run, benchmark, category, round))
),
categories as (
    select run, benchmark, count(distinct category) as categories
    from evals
    group by run, benchmark
)
select
    a.run,
    a.benchmark,
    a.category,
    a.round,
    a.questions,
    a.correct,
    a.unmatched,
    a.video_errors,
    round(100 * a.accuracy, 1) as accuracy_pct,
    round(100 * a.strict_accuracy, 1) as strict_accuracy_pct,
    round(100 * (a.accuracy - base.accuracy), 1) as vs_base_points
from accuracy a
left join accuracy base
    on base.run = a.run and base.benchmark = a.benchmark and base.category = a.category and base.round = 0
join categories c on c.run = a.run and c.benchmark = a.benchmark
where a.category = '(overall)' or c.categories > 1
order by a.run, a.benchmark, a.category <> '(overall)', a.category, a.round;
