from kbridge import Sandbox

sandbox =Sandbox(template="base")

# Read the '/etc/hosts' file
file_content = sandbox.filesystem.read("/etc/hosts")

# Prints something like:
# 127.0.0.1       localhost
print(file_content)

sandbox.close()
