"""ament_python package llm_teacher, which also installs the training launch files, their config and rviz
setups (student_deploy installs the deploy ones); metadata comes from package.xml."""
from glob import glob
from xml.etree import ElementTree

from setuptools import find_packages, setup

manifest = ElementTree.parse('package.xml').getroot()
DEPLOY = {'launch/deploy.launch.py', 'config/robot_policy_node.yaml'}  # student_deploy's (eval.launch.py needs policy_node.yaml)


def files(pattern: str) -> list[str]:
    return sorted(set(glob(pattern)) - DEPLOY)

package_name = manifest.findtext('name')

setup(
    name=package_name,
    version=manifest.findtext('version'),
    description=manifest.findtext('description'),
    license=manifest.findtext('license'),
    maintainer=manifest.findtext('maintainer'),
    maintainer_email=manifest.find('maintainer').get('email'),
    packages=find_packages(exclude=['test']),
    package_data={package_name: ['prompts/*.txt']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', files('launch/*.launch.py')),
        ('share/' + package_name + '/config', files('config/*.yaml')),
        ('share/' + package_name + '/rviz', glob('rviz/*.rviz')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    entry_points={
        'console_scripts': [
            'teacher_node = llm_teacher.teacher_node:main',
            'recorder_node = llm_teacher.recorder_node:main',
            'visualization_node = llm_teacher.visualization_node:main',
        ],
    },
)
