from kbridge import Sandbox

sandbox =Sandbox(
    template="base",
    env_vars={"FOO": "Hello"},
)

sandbox.close()
