from kbridge import Sandbox

sandbox =Sandbox(template="base")

# List the root directory
content = sandbox.filesystem.list("/")
for item in content:
    print(f"Is '{item.name}' directory?", item.is_dir)

sandbox.close()
