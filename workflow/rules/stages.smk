# One rule per entry of the stage table (src/s5cl/pipeline/stages.py): its script and data as inputs,
# its outputs, metrics and plots as outputs, its cached params and one digest of its code (the
# script and every module it runs) as the rule's params: a code edit reruns exactly the rules
# that run it, without ~35 code files printed as inputs of every job.


for STAGE in stages.STAGES:

    rule:
        name:
            STAGE.name
        input:
            script=STAGE.script,
            data=paths(STAGE.deps),
        output:
            outputs_of(STAGE),
        params:
            cached=cache_key(STAGE.params),
            code=code_digest(STAGE),
            launch=launcher(STAGE.name),
        localrule: STAGE.local  # download: on the submitting host, which has the internet
        threads: threads_of(STAGE.name)
        resources:
            **resources_of(STAGE.name),
        log:
            f"logs/{STAGE.name}.log",
        conda:
            "../envs/s5cl.yaml"
        shell:
            '{params.launch} {input.script} --params "$S5CL_PARAMS" 2>&1 | tee {log}'
