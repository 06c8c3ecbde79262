from kbridge import Sandbox

sandbox =Sandbox(
    template="base",
    cwd="/code",
)

# You can also change the cwd of an existing sandbox
sandbox.cwd ="/home"

sandbox.close()
