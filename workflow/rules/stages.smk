# One rule per entry of the stage table (src/s5cl/stages.py): its script, code and data as
# inputs, its outputs, metrics and plots as outputs, its cached params as the rule's params.


for STAGE in stages.STAGES:

    rule:
        name:
            STAGE.name
        input:
            script=STAGE.script,
            code=stages.code_deps(STAGE),  # the script and every module it runs
            data=paths(STAGE.deps),
        output:
            outputs_of(STAGE),
        params:
            cached=cache_key(STAGE.params),
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
