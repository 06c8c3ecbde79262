from kbridge import Sandbox

sandbox =Sandbox(template="base", cwd="/code")
sandbox_cwd = sandbox.process.start("pwd")
sandbox_cwd.wait()
print(sandbox_cwd.output.stdout)
# output: "/code"

process_cwd = sandbox.process.start("pwd", cwd="/home")
process_cwd.wait()
print(process_cwd.output.stdout)
# output: "/home"

sandbox.close()
