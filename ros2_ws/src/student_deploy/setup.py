"""ament_python package student_deploy, which also installs the deploy launch file and its nodes'
configuration; metadata comes from package.xml."""
from xml.etree import ElementTree

from setuptools import find_packages, setup

manifest = ElementTree.parse('package.xml').getroot()
package_name = manifest.findtext('name')

setup(
    name=package_name,
    version=manifest.findtext('version'),
    description=manifest.findtext('description'),
    license=manifest.findtext('license'),
    maintainer=manifest.findtext('maintainer'),
    maintainer_email=manifest.find('maintainer').get('email'),
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', ['launch/deploy.launch.py']),
        ('share/' + package_name + '/config', ['config/robot_policy_node.yaml', 'config/policy_node.yaml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    entry_points={
        'console_scripts': [
            'policy_node = student_deploy.policy_node:main',
            'robot_policy_node = student_deploy.robot_policy_node:main',
        ],
    },
)
